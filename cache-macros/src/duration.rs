//! Durations written as strings (`"15m"`, `"1h30m"`, `"500ms"`), parsed at compile time.

use std::time::Duration;

use redis_memo_rules::{MAX_DURATION as MAX, MIN_DURATION};

/// Parses `lit` as a duration for the option `option`.
pub(crate) fn parse(lit: &syn::LitStr, option: &str) -> syn::Result<Duration> {
    let text = lit.value();
    let duration = humantime::parse_duration(text.trim()).map_err(|error| {
        syn::Error::new_spanned(
            lit,
            format!(
                "`{option}` is not a duration: {error}; write it like \"500ms\", \"15m\" or \"1h30m\""
            ),
        )
    })?;
    if duration < MIN_DURATION {
        let hint = if option == "ttl" {
            "; to stop caching, remove the attribute"
        } else {
            ""
        };
        return Err(syn::Error::new_spanned(
            lit,
            format!("`{option}` must be at least 1ms{hint}"),
        ));
    }
    if duration > MAX {
        return Err(syn::Error::new_spanned(
            lit,
            format!("`{option}` of {text:?} is longer than a year; use a shorter one"),
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(text: &str) -> syn::LitStr {
        syn::LitStr::new(text, proc_macro2::Span::call_site())
    }

    #[test]
    fn parses_humantime_and_refuses_zero_and_absurd() {
        assert_eq!(
            parse(&lit("1h30m"), "ttl").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse(&lit("500ms"), "ttl").unwrap(),
            Duration::from_millis(500)
        );
        assert!(parse(&lit("0s"), "ttl").is_err());
        assert!(parse(&lit("15 minutes please"), "ttl").is_err());
        assert!(parse(&lit("400days"), "ttl").is_err());
    }
}
