//! Payout methods (DESIGN §14): how a partner is paid — a SEPA account (IBAN checked by ISO
//! 13616 mod 97 and its country's format, BIC by ISO 9362), a PayPal address, or a Stripe
//! Connect account. The details are sealed at rest with the hub's secret key and only ever
//! shown masked (`DE89 **** **** **** **30 00`); partner keys set their own.

use async_graphql::{ID, InputObject, SimpleObject};
use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use serde::{Deserialize, Serialize};

pub use crate::db::states::PayoutMethodKind;
use crate::{
    db::{
        Db,
        entities::{partner, payout_method},
    },
    domain::{
        auth::Principal,
        ids::is_valid_id,
        normalize::{normalize_email, optional_text},
        secrets::SecretKey,
    },
    error::{ApiError, ApiResult},
};

/// Input of `setPayoutMethod`: the fields of its `kind` (the others must be absent).
#[derive(Debug, Clone, InputObject)]
pub struct SetPayoutMethodInput {
    /// The partner to pay (a partner key: its own).
    pub partner_id: ID,
    /// `SEPA`, `PAYPAL` or `STRIPE_CONNECT`.
    pub kind: PayoutMethodKind,
    /// SEPA: the account's IBAN (spaces allowed).
    pub iban: Option<String>,
    /// SEPA: the bank's BIC (8 or 11 characters; optional within the SEPA area).
    pub bic: Option<String>,
    /// SEPA: the account holder's name (required for SEPA, at most 70 characters).
    pub account_holder: Option<String>,
    /// PAYPAL: the PayPal account's email address.
    pub paypal_email: Option<String>,
    /// STRIPE_CONNECT: the connected account (`acct_…`).
    pub stripe_account_id: Option<String>,
}

/// The sealed details of a method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum MethodDetails {
    /// A SEPA account.
    #[serde(rename = "SEPA")]
    Sepa {
        /// Electronic form (no spaces, upper case).
        iban: String,
        /// Upper case, when given.
        bic: Option<String>,
        /// The holder's name.
        account_holder: String,
    },
    /// A PayPal account.
    #[serde(rename = "PAYPAL")]
    Paypal {
        /// Lower-cased.
        email: String,
    },
    /// A Stripe Connect account.
    #[serde(rename = "STRIPE_CONNECT")]
    StripeConnect {
        /// `acct_…`.
        account_id: String,
    },
}

impl MethodDetails {
    /// The kind.
    pub fn kind(&self) -> PayoutMethodKind {
        match self {
            MethodDetails::Sepa { .. } => PayoutMethodKind::Sepa,
            MethodDetails::Paypal { .. } => PayoutMethodKind::Paypal,
            MethodDetails::StripeConnect { .. } => PayoutMethodKind::StripeConnect,
        }
    }

    /// What may be shown: the IBAN's country, check digits and last four characters, the
    /// first letter and domain of an address, the last four characters of an account.
    pub fn masked(&self) -> String {
        match self {
            MethodDetails::Sepa { iban, .. } => mask_iban(iban),
            MethodDetails::Paypal { email } => match email.split_once('@') {
                Some((local, domain)) => {
                    format!("{}***@{domain}", local.chars().next().unwrap_or('*'))
                }
                None => "***".to_string(),
            },
            MethodDetails::StripeConnect { account_id } => {
                let tail: String = account_id
                    .chars()
                    .rev()
                    .take(4)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                format!("acct_****{tail}")
            }
        }
    }

    /// Seals the details for storage.
    pub fn seal(&self, key: &SecretKey) -> ApiResult<String> {
        let json = serde_json::to_string(self)
            .map_err(|e| ApiError::Internal(format!("payout method: {e}")))?;
        Ok(key.seal(&json))
    }

    /// Opens stored details.
    pub fn open(key: &SecretKey, sealed: &str) -> ApiResult<MethodDetails> {
        use secrecy::ExposeSecret;
        let json = key
            .open(sealed)
            .map_err(|e| ApiError::Internal(format!("payout method: {e}")))?;
        serde_json::from_str(json.expose_secret())
            .map_err(|e| ApiError::Internal(format!("payout method: {e}")))
    }
}

/// `DE89370400440532013000` → `DE89 **** **** **** **30 00`: the first and last four
/// characters, the rest masked, in groups of four.
pub fn mask_iban(iban: &str) -> String {
    let chars: Vec<char> = iban.chars().collect();
    let n = chars.len();
    let shown: String = chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i < 4 || i + 4 >= n { *c } else { '*' })
        .collect();
    shown
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `bic` is an ISO 9362 BIC: 4 letters (institution), 2 letters (country), 2
/// characters (location: not `0`/`1` first, not `O` second), optionally 3 (branch).
pub fn is_bic(bic: &str) -> bool {
    let b = bic.as_bytes();
    if b.len() != 8 && b.len() != 11 {
        return false;
    }
    let upper = |c: &u8| c.is_ascii_uppercase();
    let alnum = |c: &u8| c.is_ascii_uppercase() || c.is_ascii_digit();
    b[..6].iter().all(upper)
        && (b[6].is_ascii_uppercase() || (b'2'..=b'9').contains(&b[6]))
        && alnum(&b[7])
        && b[7] != b'O'
        && b[8..].iter().all(alnum)
}

fn absent(field: &str, value: &Option<String>, kind: PayoutMethodKind) -> ApiResult<()> {
    if value.is_some() {
        return Err(ApiError::bad_input(
            format!("input.{field}"),
            format!("does not apply to {kind} methods"),
        ));
    }
    Ok(())
}

/// Checks the input's fields for its kind.
pub fn check(input: &SetPayoutMethodInput) -> ApiResult<MethodDetails> {
    let kind = input.kind;
    let required = |field: &str, value: &Option<String>| -> ApiResult<String> {
        value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::bad_input(
                    format!("input.{field}"),
                    format!("is required for {kind} methods"),
                )
            })
    };
    match kind {
        PayoutMethodKind::Sepa => {
            absent("paypalEmail", &input.paypal_email, kind)?;
            absent("stripeAccountId", &input.stripe_account_id, kind)?;
            use iban::IbanLike;
            let iban: iban::Iban = required("iban", &input.iban)?
                .to_ascii_uppercase()
                .parse()
                .map_err(|e| {
                    ApiError::bad_input(
                        "input.iban",
                        format!(
                            "is not a valid IBAN (ISO 13616: country format and check digits): {e}"
                        ),
                    )
                })?;
            let bic = match optional_text("input.bic", input.bic.as_deref(), 11)? {
                Some(bic) => {
                    let bic = bic.to_ascii_uppercase();
                    if !is_bic(&bic) {
                        return Err(ApiError::bad_input(
                            "input.bic",
                            "is not a valid BIC (ISO 9362: 8 or 11 characters, such as DEUTDEFF)",
                        ));
                    }
                    Some(bic)
                }
                None => None,
            };
            let holder = required("accountHolder", &input.account_holder)?;
            if holder.chars().count() > 70 {
                return Err(ApiError::bad_input(
                    "input.accountHolder",
                    "must be at most 70 characters",
                ));
            }
            Ok(MethodDetails::Sepa {
                iban: iban.electronic_str().to_string(),
                bic,
                account_holder: holder,
            })
        }
        PayoutMethodKind::Paypal => {
            for (field, value) in [
                ("iban", &input.iban),
                ("bic", &input.bic),
                ("accountHolder", &input.account_holder),
                ("stripeAccountId", &input.stripe_account_id),
            ] {
                absent(field, value, kind)?;
            }
            let email = normalize_email(&required("paypalEmail", &input.paypal_email)?)
                .ok_or_else(|| {
                    ApiError::bad_input("input.paypalEmail", "must be an email address")
                })?;
            Ok(MethodDetails::Paypal { email })
        }
        PayoutMethodKind::StripeConnect => {
            for (field, value) in [
                ("iban", &input.iban),
                ("bic", &input.bic),
                ("accountHolder", &input.account_holder),
                ("paypalEmail", &input.paypal_email),
            ] {
                absent(field, value, kind)?;
            }
            let account = required("stripeAccountId", &input.stripe_account_id)?;
            let valid = account.strip_prefix("acct_").is_some_and(|rest| {
                (1..=64).contains(&rest.len()) && rest.chars().all(|c| c.is_ascii_alphanumeric())
            });
            if !valid {
                return Err(ApiError::bad_input(
                    "input.stripeAccountId",
                    "must be a Stripe account id (acct_ followed by letters and digits)",
                ));
            }
            Ok(MethodDetails::StripeConnect {
                account_id: account,
            })
        }
    }
}

/// A partner's payout method as shown: never the details themselves.
#[derive(Debug, Clone, SimpleObject)]
pub struct PayoutMethod {
    /// `SEPA`, `PAYPAL` or `STRIPE_CONNECT`.
    pub kind: PayoutMethodKind,
    /// The account, masked (`DE89 **** **** **** **30 00`, `o***@example.com`, `acct_****1234`).
    pub masked: String,
    /// SEPA: the account holder.
    pub account_holder: Option<String>,
    /// When it was last set.
    pub updated_at: DateTime<Utc>,
}

impl From<payout_method::Model> for PayoutMethod {
    fn from(m: payout_method::Model) -> Self {
        PayoutMethod {
            kind: m.kind,
            masked: m.masked,
            account_holder: m.account_holder,
            updated_at: m.updated_at,
        }
    }
}

/// `setPayoutMethod`: admins for any partner, a partner key for its own partner (not while
/// suspended); integration keys cannot.
pub async fn set_payout_method(
    db: &Db,
    key: &SecretKey,
    principal: &Principal,
    input: SetPayoutMethodInput,
) -> ApiResult<payout_method::Model> {
    let partner_id = input.partner_id.to_string();
    match principal {
        Principal::Admin { .. } => {}
        Principal::Partner {
            partner_id: own,
            suspended,
            ..
        } => {
            if *own != partner_id {
                return Err(ApiError::NotFound("partner"));
            }
            if *suspended {
                return Err(ApiError::Forbidden(
                    "a suspended partner's keys cannot change anything".into(),
                ));
            }
        }
        Principal::Integration { .. } => {
            return Err(ApiError::Forbidden(
                "integration keys cannot set payout methods".into(),
            ));
        }
    }
    if !is_valid_id(&partner_id) {
        return Err(ApiError::NotFound("partner"));
    }
    let details = check(&input)?;
    let sealed = details.seal(key)?;
    let tx = db.begin_write().await?;
    let partner = partner::Entity::find_by_id(partner_id.clone())
        .one(&*tx)
        .await?
        .ok_or(ApiError::NotFound("partner"))?;
    let now = Utc::now();
    let account_holder = match &details {
        MethodDetails::Sepa { account_holder, .. } => Some(account_holder.clone()),
        _ => None,
    };
    let row = payout_method::ActiveModel {
        partner_id: Set(partner.id.clone()),
        program_id: Set(partner.program_id.clone()),
        kind: Set(details.kind()),
        details: Set(sealed),
        masked: Set(details.masked()),
        account_holder: Set(account_holder),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let existing = payout_method::Entity::find_by_id(partner.id.clone())
        .one(&*tx)
        .await?;
    let stored = match existing {
        Some(found) => {
            let mut update = row;
            update.created_at = Set(found.created_at);
            update.update(&*tx).await?
        }
        None => row.insert(&*tx).await?,
    };
    tx.commit().await?;
    Ok(stored)
}

/// A partner's payout method.
pub async fn payout_method_of(
    db: &Db,
    partner_id: &str,
) -> ApiResult<Option<payout_method::Model>> {
    Ok(payout_method::Entity::find_by_id(partner_id.to_string())
        .one(db.reads())
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sepa(iban: &str, bic: Option<&str>) -> SetPayoutMethodInput {
        SetPayoutMethodInput {
            partner_id: ID("p".into()),
            kind: PayoutMethodKind::Sepa,
            iban: Some(iban.into()),
            bic: bic.map(str::to_string),
            account_holder: Some("Acme GmbH".into()),
            paypal_email: None,
            stripe_account_id: None,
        }
    }

    #[test]
    fn ibans_pass_mod_97_and_are_masked() {
        // The ISO 13616 example account and its check digits.
        let ok = check(&sepa("DE89 3704 0044 0532 0130 00", Some("cobadeffxxx"))).unwrap();
        assert_eq!(ok.masked(), "DE89 **** **** **** **30 00");
        assert_eq!(
            ok,
            MethodDetails::Sepa {
                iban: "DE89370400440532013000".into(),
                bic: Some("COBADEFFXXX".into()),
                account_holder: "Acme GmbH".into()
            }
        );
        // One digit off fails the checksum.
        assert!(check(&sepa("DE89 3704 0044 0532 0130 01", None)).is_err());
        assert!(check(&sepa("GB82 WEST 1234 5698 7654 32", None)).is_ok());
        assert!(check(&sepa("DE89370400440532013000", Some("DEUT1EFF"))).is_err());
    }

    #[test]
    fn bics_follow_iso_9362() {
        for ok in ["DEUTDEFF", "DEUTDEFF500", "NEDSZAJJXXX", "BNPAFRPP"] {
            assert!(is_bic(ok), "{ok}");
        }
        for bad in [
            "DEUTDEF",
            "DEUTDEFF5",
            "DEU1DEFF",
            "DEUTDE1F",
            "DEUTDEFO",
            "deutdeff",
        ] {
            assert!(!is_bic(bad), "{bad}");
        }
    }

    #[test]
    fn other_accounts_are_masked() {
        assert_eq!(
            MethodDetails::Paypal {
                email: "olga@nordic.example".into()
            }
            .masked(),
            "o***@nordic.example"
        );
        assert_eq!(
            MethodDetails::StripeConnect {
                account_id: "acct_1Nv0FGQ9RKHgCVdK".into()
            }
            .masked(),
            "acct_****CVdK"
        );
    }
}
