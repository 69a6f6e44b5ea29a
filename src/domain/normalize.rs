//! Normalisation and validation of the identifiers partners type in: company domains, emails,
//! currency codes.

/// Mail providers whose domains never identify a company.
const FREE_MAIL_DOMAINS: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "hotmail.co.uk",
    "live.com",
    "msn.com",
    "yahoo.com",
    "yahoo.co.uk",
    "ymail.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "pm.me",
    "gmx.com",
    "gmx.de",
    "gmx.net",
    "web.de",
    "mail.com",
    "yandex.com",
    "yandex.ru",
    "zoho.com",
    "fastmail.com",
    "tutanota.com",
    "hey.com",
    "qq.com",
    "163.com",
];

/// Whether `domain` (already normalised) belongs to a free-mail provider.
pub fn is_free_mail(domain: &str) -> bool {
    FREE_MAIL_DOMAINS.contains(&domain)
}

/// Normalises a company domain: lower case, no scheme, no `www.`, no path, query or port.
/// Returns `None` when what is left is not a plausible domain name.
pub fn normalize_domain(input: &str) -> Option<String> {
    let mut s = input.trim().to_ascii_lowercase();
    for scheme in ["https://", "http://"] {
        if let Some(rest) = s.strip_prefix(scheme) {
            s = rest.to_string();
        }
    }
    let end = s.find(['/', '?', '#']).unwrap_or(s.len());
    s.truncate(end);
    if let Some(colon) = s.rfind(':')
        && s[colon + 1..].chars().all(|c| c.is_ascii_digit())
    {
        s.truncate(colon);
    }
    let s = s.trim_end_matches('.');
    let s = s.strip_prefix("www.").unwrap_or(s);
    is_valid_domain(s).then(|| s.to_string())
}

fn is_valid_domain(s: &str) -> bool {
    if s.len() > 253 || !s.contains('.') {
        return false;
    }
    let labels: Vec<&str> = s.split('.').collect();
    let valid_labels = labels.iter().all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    });
    let tld = labels.last().copied().unwrap_or_default();
    valid_labels && tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic() || c == '-')
}

/// Normalises an email address (trimmed, lower case) and checks its shape.
pub fn normalize_email(input: &str) -> Option<String> {
    let s = input.trim().to_ascii_lowercase();
    let (local, domain) = s.rsplit_once('@')?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.contains(char::is_whitespace)
        && !local.contains('@');
    (local_ok && is_valid_domain(domain)).then_some(s)
}

/// The domain part of a normalised email.
pub fn email_domain(email: &str) -> Option<&str> {
    email.rsplit_once('@').map(|(_, d)| d)
}

/// The company domain a normalised domain stands for: `None` for free-mail providers.
pub fn company_domain(domain: Option<String>) -> Option<String> {
    domain.filter(|d| !is_free_mail(d))
}

/// Normalises a currency code (upper case) and checks it is an active ISO 4217 code.
pub fn normalize_currency(input: &str) -> Option<String> {
    tandem_connectors::money::currency(input)
}

/// An optional free text: trimmed, empty as absent, at most `max` characters (else
/// `BAD_USER_INPUT` on `field`).
pub fn optional_text(
    field: &str,
    value: Option<&str>,
    max: usize,
) -> crate::error::ApiResult<Option<String>> {
    let text = value.map(str::trim).filter(|t| !t.is_empty());
    if text.is_some_and(|t| t.chars().count() > max) {
        return Err(crate::error::ApiError::bad_input(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(text.map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalised() {
        assert_eq!(
            normalize_domain(" HTTPS://www.Acme.com/pricing?x=1 ").as_deref(),
            Some("acme.com")
        );
        assert_eq!(
            normalize_domain("acme.co.uk:443").as_deref(),
            Some("acme.co.uk")
        );
        assert_eq!(
            normalize_domain("sub.acme.io.").as_deref(),
            Some("sub.acme.io")
        );
        assert_eq!(normalize_domain("not a domain"), None);
        assert_eq!(normalize_domain("localhost"), None);
        assert_eq!(normalize_domain("a@b.com"), None);
        assert_eq!(normalize_domain(""), None);
    }

    #[test]
    fn emails_are_normalised() {
        assert_eq!(
            normalize_email(" Jane.Doe@Acme.COM ").as_deref(),
            Some("jane.doe@acme.com")
        );
        assert_eq!(normalize_email("jane"), None);
        assert_eq!(normalize_email("@acme.com"), None);
        assert_eq!(normalize_email("jane@acme"), None);
    }

    #[test]
    fn free_mail_is_not_a_company_domain() {
        assert_eq!(company_domain(Some("gmail.com".into())), None);
        assert_eq!(company_domain(Some("proton.me".into())), None);
        assert_eq!(
            company_domain(Some("acme.com".into())).as_deref(),
            Some("acme.com")
        );
    }

    #[test]
    fn currencies_are_checked() {
        assert_eq!(normalize_currency("eur").as_deref(), Some("EUR"));
        assert_eq!(normalize_currency("XXX"), None);
        assert_eq!(normalize_currency("EURO"), None);
    }

    proptest::proptest! {
        #[test]
        fn normalisation_never_panics_and_is_idempotent(input in "\\PC{0,80}") {
            if let Some(domain) = normalize_domain(&input) {
                proptest::prop_assert_eq!(normalize_domain(&domain), Some(domain.clone()));
                proptest::prop_assert!(!domain.starts_with("www."));
                proptest::prop_assert!(!domain.contains('/'));
                proptest::prop_assert_eq!(domain.to_ascii_lowercase(), domain);
            }
            if let Some(email) = normalize_email(&input) {
                proptest::prop_assert_eq!(normalize_email(&email), Some(email.clone()));
                proptest::prop_assert!(email_domain(&email).is_some());
            }
            let _ = normalize_currency(&input);
        }

        #[test]
        fn urls_of_a_domain_normalise_to_it(
            label in "[a-z][a-z0-9-]{0,10}[a-z0-9]",
            tld in "(com|io|co\\.uk|example)",
            scheme in "(|http://|https://|HTTPS://)",
            www in "(|www\\.|WWW\\.)",
            path in "(|/|/pricing|/a/b\\?x=1|:8443/x)",
        ) {
            proptest::prop_assume!(label != "www");
            let domain = format!("{label}.{tld}");
            let url = format!("{scheme}{www}{domain}{path}");
            proptest::prop_assert_eq!(normalize_domain(&url), Some(domain));
        }
    }
}
