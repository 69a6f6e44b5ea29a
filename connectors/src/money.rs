//! The bounds of money Tandem accepts, in one place: every entry point (inbound webhooks, CRM
//! sync, GraphQL inputs) checks amounts and currency codes against them, so that the
//! commission arithmetic downstream never meets a value it cannot hold. Amounts are
//! non-negative and below 10^12 (at most 999,999,999,999.99 in any currency): in cents that is
//! below 10^14, so a sum of 10,000 such amounts still fits an `i64`, and a product with a
//! percentage or an exchange rate (at most [`MAX_EXCHANGE_RATE`]) fits a `Decimal` with room.

use rust_decimal::Decimal;

/// Active ISO 4217 currency codes.
const ISO_4217: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL \
BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP \
GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF \
KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN \
NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD \
SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND \
VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG";

/// The largest exchange rate accepted (units of quote per unit of base).
pub const MAX_EXCHANGE_RATE: i64 = 1_000_000;

/// Amounts must be below this (exclusive): 10^12.
pub fn amount_limit() -> Decimal {
    Decimal::new(1_000_000_000_000, 0)
}

/// The message every rejected amount carries.
pub const AMOUNT_RULE: &str = "must be a non-negative amount below 1000000000000 (10^12)";

/// Whether `value` is an amount Tandem accepts (see the module comment).
pub fn check_amount(value: Decimal) -> Result<Decimal, &'static str> {
    if value.is_sign_negative() && !value.is_zero() || value >= amount_limit() {
        return Err(AMOUNT_RULE);
    }
    Ok(value)
}

/// Normalises a currency code (upper case) and checks it is an active ISO 4217 code.
pub fn currency(input: &str) -> Option<String> {
    let code = input.trim().to_ascii_uppercase();
    (code.len() == 3 && ISO_4217.split_whitespace().any(|c| c == code)).then_some(code)
}

/// The ISO 4217 minor-unit exponent of an (upper-case) currency: how many decimal places its
/// minor unit has (JPY 0, EUR 2, KWD 3). Billing systems send amounts in these minor units.
pub fn minor_unit_exponent(code: &str) -> u32 {
    const ZERO: &[&str] = &[
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV",
        "XAF", "XOF", "XPF",
    ];
    const THREE: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
    if ZERO.contains(&code) {
        0
    } else if THREE.contains(&code) {
        3
    } else {
        2
    }
}

/// An amount in minor units of `code` as a decimal in major units (`1999` EUR → `19.99`).
pub fn from_minor_units(minor: i64, code: &str) -> Decimal {
    Decimal::new(minor, minor_unit_exponent(code))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn minor_units_follow_iso_4217_exponents() {
        assert_eq!(from_minor_units(100_000, "EUR").to_string(), "1000.00");
        assert_eq!(from_minor_units(1999, "USD").to_string(), "19.99");
        assert_eq!(from_minor_units(1999, "JPY").to_string(), "1999");
        assert_eq!(from_minor_units(1999, "KWD").to_string(), "1.999");
    }

    #[test]
    fn amounts_within_bounds_pass() {
        for ok in [
            "0",
            "0.00",
            "-0",
            "1250.50",
            "999999999999.99",
            "999999999999.999999",
        ] {
            assert!(check_amount(Decimal::from_str(ok).unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "-0.01",
            "-5",
            "1000000000000",
            "800000000000000000000000000",
        ] {
            assert_eq!(
                check_amount(Decimal::from_str(bad).unwrap()),
                Err(AMOUNT_RULE),
                "{bad}"
            );
        }
    }

    #[test]
    fn currencies_are_iso_codes() {
        assert_eq!(currency(" usd ").as_deref(), Some("USD"));
        assert_eq!(currency("EUR").as_deref(), Some("EUR"));
        for bad in ["../../", "US", "USDX", "XXX", "", "ABC"] {
            assert_eq!(currency(bad), None, "{bad}");
        }
    }

    proptest! {
        /// Any decimal is either accepted and within bounds, or rejected; nothing panics.
        #[test]
        fn every_decimal_is_inside_or_rejected(mantissa in any::<i128>(), scale in 0u32..=28) {
            let bounded = mantissa % 79_228_162_514_264_337_593_543_950_335;
            let value = Decimal::from_i128_with_scale(bounded, scale);
            match check_amount(value) {
                Ok(v) => prop_assert!(v >= Decimal::ZERO && v < amount_limit()),
                Err(_) => prop_assert!(value < Decimal::ZERO || value >= amount_limit()),
            }
        }
    }
}
