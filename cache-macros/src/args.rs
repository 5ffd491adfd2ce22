//! Parsing the options of `#[redis_cached(...)]` into [`CachedArgs`].
//!
//! Every option is `name`, or `name = value`. Errors are collected (unknown, duplicate,
//! malformed and missing options) and reported together.

use crate::duration;
use crate::errors::Errors;
use crate::template::Template;
use proc_macro2::Span;
use redis_memo_rules::default_lease;
use std::time::Duration;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Expr, Ident, LitInt, LitStr, Path, Token};

/// The options this version accepts, listed in error messages.
const VALID: &str = "`ttl`, `key`, `tags`, `invalidate_all`, `cache`, `cache_none`, `lock`, \
     `stale`, `fail_safe`, `soft_timeout`, `hard_timeout`, `early`, `jitter`, `local`, `sliding`, \
     `version`, `crate`";

/// The options of one `#[redis_cached]`, checked for form but not yet against the function.
pub(crate) struct CachedArgs {
    pub(crate) ttl: Duration,
    pub(crate) key: Template,
    /// `tags = ["org:<org_id>", ..]`.
    pub(crate) tags: Vec<Template>,
    /// `invalidate_all`: entries record the function's own tag.
    pub(crate) invalidate_all: bool,
    /// `cache = <expr>`: where the `&Cache` comes from; the installed global one otherwise.
    pub(crate) cache: Option<Expr>,
    /// `lock`: wait for another process's value instead of computing it too.
    pub(crate) lock: Option<Lock>,
    /// `cache_none`, where it was written.
    pub(crate) cache_none: Option<Span>,
    /// `stale = "1m"`, and where it was written.
    pub(crate) stale: Option<(Duration, Span)>,
    /// `fail_safe = "1h"`, and where it was written.
    pub(crate) fail_safe: Option<(Duration, Span)>,
    /// `soft_timeout = "100ms"`, and where it was written.
    pub(crate) soft_timeout: Option<(Duration, Span)>,
    /// `hard_timeout = "2s"`, and where it was written.
    pub(crate) hard_timeout: Option<(Duration, Span)>,
    /// `early`, where it was written.
    pub(crate) early: Option<Span>,
    /// `jitter = "10%"`, in thousandths of the ttl.
    pub(crate) jitter_per_mille: u16,
    /// `local` (as long as the ttl) or `local = "30s"`: the longest an in-process copy of an
    /// entry is served.
    pub(crate) local: Option<Duration>,
    /// `sliding` / `sliding(max_age = "12h")`.
    pub(crate) sliding: Option<Sliding>,
    pub(crate) version: u32,
    /// `crate = "path"`: the facade's path when the dependency is renamed.
    pub(crate) krate: Path,
}

/// One `name [= value]` pair as written.
struct RawOption {
    name: Ident,
    value: Option<Expr>,
    /// `name(sub = value, ..)`, as in `lock(wait = "2s")`.
    list: Option<Vec<RawOption>>,
}

impl Parse for RawOption {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        // `parse_any` so that the keyword `crate` is accepted as an option name.
        let name = Ident::parse_any(input)?;
        let list = if input.peek(syn::token::Paren) {
            let content;
            syn::parenthesized!(content in input);
            let items = content.parse_terminated(RawOption::parse, Token![,])?;
            Some(items.into_iter().collect())
        } else {
            None
        };
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse::<Expr>()?)
        } else {
            None
        };
        Ok(RawOption { name, value, list })
    }
}

/// The raw, comma separated options.
pub(crate) struct RawOptions(Vec<RawOption>);

impl Parse for RawOptions {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let options = input.parse_terminated(RawOption::parse, Token![,])?;
        Ok(RawOptions(options.into_iter().collect()))
    }
}

/// Checks the options' names and values. `attr_span` is where to report missing options.
pub(crate) fn check(raw: RawOptions, attr_span: Span, errors: &mut Errors) -> Option<CachedArgs> {
    let mut seen: Vec<String> = Vec::new();
    let mut ttl = None;
    let mut key = None;
    let mut tags = Vec::new();
    let mut invalidate_all = false;
    let mut cache = None;
    let mut cache_none = None;
    let mut version = 0;
    let mut krate: Option<Path> = None;
    let mut stale = None;
    let mut fail_safe = None;
    let mut early = None;
    let mut soft_timeout = None;
    let mut hard_timeout = None;
    let mut jitter_per_mille = 0;
    let mut local = None;
    let mut sliding = None;

    let mut lock = None;
    for RawOption { name, value, list } in raw.0 {
        let name_text = name.to_string();
        if list.is_some() && name_text != "lock" && name_text != "sliding" {
            errors.spanned(
                &name,
                format!(
                    "`{name_text}` takes no parenthesized options; only `lock(..)` and \
                     `sliding(..)` do"
                ),
            );
            continue;
        }
        if seen.contains(&name_text) {
            errors.spanned(&name, format!("`{name_text}` is given twice; keep one"));
            continue;
        }
        seen.push(name_text.clone());
        match name_text.as_str() {
            "ttl" => {
                if let Some(lit) = string_value(&name, value.as_ref(), "\"15m\"", errors) {
                    match duration::parse(&lit, "ttl") {
                        Ok(parsed) => ttl = Some(parsed),
                        Err(error) => errors.push(error),
                    }
                }
            }
            "key" => {
                if let Some(lit) = string_value(&name, value.as_ref(), "\"user:<id>\"", errors) {
                    match Template::parse(&lit, "key") {
                        Ok(template) => key = Some(template),
                        Err(error) => errors.push(error),
                    }
                }
            }
            "tags" => tags = tag_templates(&name, value.as_ref(), errors),
            "invalidate_all" => match value {
                None => invalidate_all = true,
                Some(value) => errors.spanned(
                    value,
                    "`invalidate_all` takes no value: write `invalidate_all`",
                ),
            },
            "cache" => match value {
                Some(expr) => cache = Some(expr),
                None => errors.spanned(
                    &name,
                    "`cache` needs a value: `cache = <expression giving a &Cache>`",
                ),
            },
            "cache_none" => match value {
                None => cache_none = Some(name.span()),
                Some(value) => {
                    errors.spanned(value, "`cache_none` takes no value: write `cache_none`")
                }
            },
            "version" => {
                if let Some(parsed) = version_value(&name, value.as_ref(), errors) {
                    version = parsed;
                }
            }
            "local" => match value {
                // As long as the ttl; resolved once the ttl is known.
                None => local = Some(None),
                Some(_) => {
                    if let Some(lit) = string_value(&name, value.as_ref(), "\"30s\"", errors) {
                        match duration::parse(&lit, "local") {
                            Ok(parsed) => local = Some(Some(parsed)),
                            Err(error) => errors.push(error),
                        }
                    }
                }
            },
            "stale" => {
                if let Some(lit) = string_value(&name, value.as_ref(), "\"1m\"", errors) {
                    match duration::parse(&lit, "stale") {
                        Ok(parsed) => stale = Some((parsed, name.span())),
                        Err(error) => errors.push(error),
                    }
                }
            }
            "fail_safe" => {
                if let Some(lit) = string_value(&name, value.as_ref(), "\"1h\"", errors) {
                    match duration::parse(&lit, "fail_safe") {
                        Ok(parsed) => fail_safe = Some((parsed, lit.span())),
                        Err(error) => errors.push(error),
                    }
                }
            }
            "soft_timeout" | "hard_timeout" => {
                if let Some(lit) = string_value(&name, value.as_ref(), "\"500ms\"", errors) {
                    match duration::parse(&lit, &name_text) {
                        Ok(parsed) if name_text == "soft_timeout" => {
                            soft_timeout = Some((parsed, lit.span()));
                        }
                        Ok(parsed) => hard_timeout = Some((parsed, lit.span())),
                        Err(error) => errors.push(error),
                    }
                }
            }
            "early" => match value {
                None => early = Some(name.span()),
                Some(value) => errors.spanned(value, "`early` takes no value: write `early`"),
            },
            "jitter" => {
                if let Some(lit) = string_value(&name, value.as_ref(), "\"10%\"", errors) {
                    match percentage(&lit, "jitter") {
                        Ok(parsed) => jitter_per_mille = parsed,
                        Err(error) => errors.push(error),
                    }
                }
            }
            "crate" => {
                if let Some(lit) = string_value(&name, value.as_ref(), "\"my_redis_memo\"", errors)
                {
                    match lit.parse::<Path>() {
                        Ok(path) => krate = Some(path),
                        Err(_) => errors.spanned(&lit, "`crate` must be a path such as \"my_redis_memo\" or \"::deps::redis_memo\""),
                    }
                }
            }
            "sliding" => match value {
                Some(value) => {
                    errors.spanned(value, "write `sliding`, or `sliding(max_age = \"12h\")`")
                }
                None => {
                    sliding = Some(sliding_options(&name, list.unwrap_or_default(), errors));
                }
            },
            "lock" => match value {
                Some(value) => errors.spanned(
                    value,
                    "write `lock`, or `lock(wait = \"2s\", lease = \"10s\")`",
                ),
                None => lock = Some(lock_options(list.unwrap_or_default(), errors)),
            },
            _ => errors.spanned(
                &name,
                format!("unknown option `{name_text}`; the options are {VALID}"),
            ),
        }
    }

    if !seen.iter().any(|s| s == "ttl") {
        match stale {
            Some((_, stale_span)) => errors.at(stale_span, "`stale` needs a `ttl`: the stale window starts when the ttl ends; add `ttl = \"15m\"`"),
            None => errors.at(attr_span, "missing `ttl`: add `ttl = \"15m\"` (how long an entry stays fresh)"),
        }
    }
    if let (Some(ttl), Some((fail_safe, span))) = (ttl, fail_safe)
        && fail_safe <= ttl
    {
        errors.at(
            span,
            "`fail_safe` is how old a value may be and still stand in for a failed call: make it \
             longer than the `ttl`, during which the value is fresh anyway",
        );
    }
    if let (Some((soft, span)), Some((hard, _))) = (soft_timeout, hard_timeout)
        && soft >= hard
    {
        errors.at(
            span,
            "`soft_timeout` must be shorter than `hard_timeout`: the soft one lets a caller with a \
             fail-safe value go early, the hard one bounds every caller",
        );
    }
    if let (Some((_, span)), None) = (soft_timeout, fail_safe) {
        errors.at(
            span,
            "`soft_timeout` serves the fail-safe value when the body is slow: add `fail_safe = \"1h\"` \
             (how old that value may be)",
        );
    }
    if let Some(sliding) = &sliding {
        check_sliding(sliding, &seen, ttl, (&tags, invalidate_all), errors);
    }
    if !seen.iter().any(|s| s == "key") {
        errors.at(attr_span, "missing `key`: add `key = \"name:<param>\"`, naming the parameters that identify a call");
    }
    // With a usable key the function can still be checked, so its errors are reported together
    // with this attribute's; the placeholder ttl is never emitted (an error was recorded).
    Some(CachedArgs {
        ttl: ttl.unwrap_or(Duration::from_secs(1)),
        key: key?,
        tags,
        invalidate_all,
        cache,
        cache_none,
        stale,
        fail_safe,
        soft_timeout,
        hard_timeout,
        early,
        jitter_per_mille,
        local: local.map(|max_age| max_age.unwrap_or_else(|| ttl_or_default(ttl))),
        sliding,
        lock: lock.map(|lock| lock.resolve(ttl_or_default(ttl), errors)),
        version,
        krate: krate.unwrap_or_else(|| syn::parse_quote!(::redis_memo)),
    })
}

/// Most tags an entry can record, besides its function's own.
const MAX_TAGS: usize = 32;

/// `tags = ["org:<org_id>", "users"]`: templates, checked like keys.
pub(crate) fn tag_templates(
    name: &Ident,
    value: Option<&Expr>,
    errors: &mut Errors,
) -> Vec<Template> {
    const EXAMPLE: &str = "`tags = [\"org:<org_id>\", \"users\"]`";
    let Some(Expr::Array(array)) = value else {
        let span = value.map_or(name.span(), |v| v.span());
        errors.at(
            span,
            format!("`{name}` must be a list of string literals, like {EXAMPLE}"),
        );
        return Vec::new();
    };
    let mut templates: Vec<Template> = Vec::new();
    for element in &array.elems {
        let Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) = element
        else {
            errors.spanned(
                element,
                format!("a tag is a string literal, like {EXAMPLE}"),
            );
            continue;
        };
        match Template::parse(lit, "tag") {
            Ok(template) if templates.iter().any(|t| t.source == template.source) => {
                errors.spanned(
                    lit,
                    format!("the tag \"{}\" is given twice; keep one", template.source),
                );
            }
            Ok(template) => templates.push(template),
            Err(error) => errors.push(error),
        }
    }
    if array.elems.is_empty() {
        errors.spanned(
            array,
            format!("`{name}` is empty: remove it, or name tags like {EXAMPLE}"),
        );
    }
    if templates.len() > MAX_TAGS {
        errors.spanned(
            array,
            format!("at most {MAX_TAGS} tags per function; each one is read on every call"),
        );
    }
    templates
}

fn string_value(
    name: &Ident,
    value: Option<&Expr>,
    example: &str,
    errors: &mut Errors,
) -> Option<LitStr> {
    match value {
        Some(Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        })) => Some(lit.clone()),
        Some(other) => {
            errors.spanned(
                other,
                format!("`{name}` must be a string literal, like `{name} = {example}`"),
            );
            None
        }
        None => {
            errors.spanned(
                name,
                format!("`{name}` needs a value, like `{name} = {example}`"),
            );
            None
        }
    }
}

/// `"10%"` or `"12.5%"`, more than 0 and at most 100, in thousandths.
fn percentage(lit: &LitStr, option: &str) -> syn::Result<u16> {
    let text = lit.value();
    let refuse = |why: &str| {
        syn::Error::new_spanned(
            lit,
            format!("`{option}` {why}; write a share of the ttl like \"10%\" or \"2.5%\""),
        )
    };
    let number = text
        .trim()
        .strip_suffix('%')
        .ok_or_else(|| refuse("is a percentage"))?
        .trim();
    let (whole, tenths) = match number.split_once('.') {
        Some((whole, tenths)) if tenths.len() == 1 => (whole, tenths),
        Some(_) => return Err(refuse("takes at most one decimal")),
        None => (number, "0"),
    };
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(tenths) {
        return Err(refuse("is a percentage"));
    }
    let per_mille = whole
        .parse::<u32>()
        .ok()
        .and_then(|whole| whole.checked_mul(10))
        .and_then(|tens| tens.checked_add(tenths.parse::<u32>().ok()?))
        .ok_or_else(|| refuse("is over 100%"))?;
    match per_mille {
        0 => Err(refuse("of 0% spreads nothing: remove it")),
        1..=1000 => Ok(u16::try_from(per_mille).unwrap_or(1000)),
        _ => Err(refuse(
            "is over 100%: it cannot shorten a ttl by more than all of it",
        )),
    }
}

fn version_value(name: &Ident, value: Option<&Expr>, errors: &mut Errors) -> Option<u32> {
    let Some(Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Int(lit),
        ..
    })) = value
    else {
        let span = value.map_or(name.span(), |v| v.span());
        errors.at(span, "`version` must be a whole number, like `version = 2`; bump it when the cached type changes shape");
        return None;
    };
    match parse_u32(lit) {
        Some(version) => Some(version),
        None => {
            errors.spanned(lit, "`version` must fit in a u32");
            None
        }
    }
}

fn parse_u32(lit: &LitInt) -> Option<u32> {
    lit.base10_parse::<u32>().ok()
}

/// `lock` as resolved: how long a waiter waits, and the lease if given explicitly.
pub(crate) struct Lock {
    pub(crate) wait: Duration,
    pub(crate) lease: Option<Duration>,
}

/// `lock(..)` as written.
struct LockOptions {
    wait: Option<(Duration, Span)>,
    lease: Option<(Duration, Span)>,
}

/// A waiter waits this long by default, or less if the lease is shorter.
const DEFAULT_WAIT: Duration = Duration::from_secs(2);

fn lock_options(list: Vec<RawOption>, errors: &mut Errors) -> LockOptions {
    let mut options = LockOptions {
        wait: None,
        lease: None,
    };
    for sub in list {
        let sub_name = sub.name.to_string();
        if sub.list.is_some() {
            errors.spanned(&sub.name, format!("write `{sub_name} = \"2s\"`"));
            continue;
        }
        let slot = match sub_name.as_str() {
            "wait" => &mut options.wait,
            "lease" => &mut options.lease,
            _ => {
                errors.spanned(
                    &sub.name,
                    format!(
                        "unknown `lock` option `{sub_name}`; the options are `wait` and `lease`"
                    ),
                );
                continue;
            }
        };
        if slot.is_some() {
            errors.spanned(&sub.name, format!("`{sub_name}` is given twice; keep one"));
            continue;
        }
        if let Some(lit) = string_value(&sub.name, sub.value.as_ref(), "\"2s\"", errors) {
            match duration::parse(&lit, &format!("lock({sub_name})")) {
                Ok(parsed) => *slot = Some((parsed, lit.span())),
                Err(error) => errors.push(error),
            }
        }
    }
    options
}

impl LockOptions {
    /// Checks the options against each other: a waiter that outlasted the lease would wait
    /// for a holder that no longer holds anything.
    fn resolve(self, ttl: Duration, errors: &mut Errors) -> Lock {
        let lease = self
            .lease
            .map_or_else(|| default_lease(ttl), |(lease, _)| lease);
        let wait = match self.wait {
            Some((wait, span)) => {
                if wait > lease {
                    errors.at(
                        span,
                        format!(
                            "`wait` ({}) is longer than the lease ({}): a waiter would outwait the holder; \
                             shorten `wait` or give a longer `lease`",
                            humantime::format_duration(wait),
                            humantime::format_duration(lease)
                        ),
                    );
                }
                wait
            }
            None => DEFAULT_WAIT.min(lease),
        };
        Lock {
            wait,
            lease: self.lease.map(|(lease, _)| lease),
        }
    }
}

/// `sliding` as written: where, and its `max_age` if given.
pub(crate) struct Sliding {
    pub(crate) span: Span,
    pub(crate) max_age: Option<(Duration, Span)>,
}

fn sliding_options(name: &Ident, list: Vec<RawOption>, errors: &mut Errors) -> Sliding {
    let mut sliding = Sliding {
        span: name.span(),
        max_age: None,
    };
    for sub in list {
        let sub_name = sub.name.to_string();
        if sub_name != "max_age" || sub.list.is_some() {
            errors.spanned(
                &sub.name,
                format!("unknown `sliding` option `{sub_name}`; the option is `max_age = \"12h\"`"),
            );
        } else if sliding.max_age.is_some() {
            errors.spanned(&sub.name, "`max_age` is given twice; keep one");
        } else if let Some(lit) = string_value(&sub.name, sub.value.as_ref(), "\"12h\"", errors) {
            match duration::parse(&lit, "sliding(max_age)") {
                Ok(parsed) => sliding.max_age = Some((parsed, lit.span())),
                Err(error) => errors.push(error),
            }
        }
    }
    sliding
}

/// What `sliding` cannot go with, and why.
const NOT_WITH_SLIDING: [(&str, &str); 5] = [
    (
        "stale",
        "a sliding entry stays fresh while it is read and ends when it is not, so it is never \
         stale",
    ),
    (
        "fail_safe",
        "a sliding entry is gone once it goes unread for its ttl, so no older value is kept to \
         stand in",
    ),
    (
        "early",
        "a sliding entry's expiry moves with every read, so there is none to refresh ahead of",
    ),
    (
        "jitter",
        "a sliding entry's expiry moves with every read, so entries written together do not \
         expire together anyway",
    ),
    (
        "local",
        "a read answered in process would not push the entry's expiry out in Redis",
    ),
];

/// `sliding` against the other options: the ones it does not go with, a `max_age` that is
/// not longer than the ttl, and tags without a `max_age` (a tag's version key must outlive
/// the entries that record it, and without one a read entry never ends).
fn check_sliding(
    sliding: &Sliding,
    seen: &[String],
    ttl: Option<Duration>,
    (tags, invalidate_all): (&[Template], bool),
    errors: &mut Errors,
) {
    for (option, why) in NOT_WITH_SLIDING {
        if seen.iter().any(|seen| seen == option) {
            errors.at(
                sliding.span,
                format!("`sliding` does not go with `{option}`: {why}; drop one of them"),
            );
        }
    }
    match sliding.max_age {
        Some((max_age, span)) if ttl.is_some_and(|ttl| max_age <= ttl) => errors.at(
            span,
            "`max_age` is how long after it was computed a sliding entry is served at most: make \
             it longer than the `ttl`, which each read renews",
        ),
        None if !tags.is_empty() || invalidate_all => errors.at(
            sliding.span,
            "a sliding entry with tags needs `sliding(max_age = \"12h\")`: its tags must outlive \
             it, and without a maximum age an entry read often enough never ends",
        ),
        _ => {}
    }
}

fn ttl_or_default(ttl: Option<Duration>) -> Duration {
    ttl.unwrap_or(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_shares_of_at_most_all() {
        let lit = |text: &str| LitStr::new(text, Span::call_site());
        assert_eq!(percentage(&lit("10%"), "jitter").unwrap(), 100);
        assert_eq!(percentage(&lit("2.5%"), "jitter").unwrap(), 25);
        assert_eq!(percentage(&lit("100%"), "jitter").unwrap(), 1000);
        for bad in [
            "0%",
            "101%",
            "10",
            "1.25%",
            "-5%",
            "%",
            "ten%",
            "99999999999%",
        ] {
            assert!(percentage(&lit(bad), "jitter").is_err(), "{bad}");
        }
    }

    fn check_str(options: &str) -> (Option<CachedArgs>, Errors) {
        let raw: RawOptions = syn::parse_str(options).expect("parses as options");
        let mut errors = Errors::default();
        let args = check(raw, Span::call_site(), &mut errors);
        (args, errors)
    }

    #[test]
    fn reads_every_option() {
        let (args, errors) = check_str(
            r#"ttl = "1h30m", key = "u:<id>", cache = self.cache, cache_none, version = 4, crate = "x::memo""#,
        );
        assert!(errors.is_empty());
        let args = args.unwrap();
        assert_eq!(args.ttl, Duration::from_secs(5400));
        assert_eq!(args.key.source, "u:<id>");
        assert!(args.cache.is_some() && args.cache_none.is_some());
        assert_eq!(args.version, 4);
        let krate = &args.krate;
        assert_eq!(
            quote::quote!(#krate).to_string().replace(' ', ""),
            "x::memo"
        );
    }

    #[test]
    fn reads_tags_and_refuses_malformed_ones() {
        let (args, errors) = check_str(r#"ttl = "1m", key = "k", tags = ["org:<org>", "users"]"#);
        assert!(errors.is_empty());
        let sources: Vec<_> = args
            .unwrap()
            .tags
            .iter()
            .map(|t| t.source.clone())
            .collect();
        assert_eq!(sources, ["org:<org>", "users"]);
        let (_, errors) =
            check_str(r#"ttl = "1m", key = "k", tags = ["a", "a", 5, "b*"], cache_none"#);
        let message = errors.into_compile_errors().to_string();
        for expected in ["given twice", "string literal", "glob characters"] {
            assert!(
                message.contains(expected),
                "{expected:?} missing from {message}"
            );
        }
    }

    #[test]
    fn sliding_reads_its_max_age_and_refuses_what_it_does_not_go_with() {
        let max_age = |options: &str| {
            let (args, errors) = check_str(options);
            assert!(errors.is_empty(), "{options}");
            args.unwrap()
                .sliding
                .map(|sliding| sliding.max_age.map(|(age, _)| age))
        };
        assert_eq!(max_age(r#"ttl = "30m", key = "k", sliding"#), Some(None));
        assert_eq!(
            max_age(r#"ttl = "30m", key = "k", sliding(max_age = "12h")"#),
            Some(Some(Duration::from_secs(12 * 3600)))
        );
        assert_eq!(max_age(r#"ttl = "30m", key = "k""#), None);
        for refused in [
            r#"ttl = "30m", key = "k", sliding, stale = "1m""#,
            r#"ttl = "30m", key = "k", sliding, local"#,
            r#"ttl = "30m", key = "k", sliding(max_age = "30m")"#,
            r#"ttl = "30m", key = "k", invalidate_all, sliding"#,
        ] {
            assert!(!check_str(refused).1.is_empty(), "{refused}");
        }
    }

    #[test]
    fn bare_local_lasts_the_ttl_and_a_given_one_its_own() {
        let local = |options: &str| {
            let (args, errors) = check_str(options);
            assert!(errors.is_empty());
            args.unwrap().local
        };
        assert_eq!(
            local(r#"ttl = "10m", key = "k", local"#),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            local(r#"ttl = "10m", key = "k", local = "30s""#),
            Some(Duration::from_secs(30))
        );
        assert_eq!(local(r#"ttl = "10m", key = "k""#), None);
    }

    #[test]
    fn lock_defaults_follow_the_lease() {
        let (args, errors) = check_str(r#"ttl = "1m", key = "k", lock"#);
        assert!(errors.is_empty());
        let lock = args.unwrap().lock.unwrap();
        assert_eq!((lock.wait, lock.lease), (DEFAULT_WAIT, None));
        let (args, _) = check_str(r#"ttl = "300ms", key = "k", lock"#);
        assert_eq!(
            args.unwrap().lock.unwrap().wait,
            Duration::from_secs(1),
            "the default lease is 1s here"
        );
        let (args, _) = check_str(r#"ttl = "1m", key = "k", lock(lease = "500ms")"#);
        let lock = args.unwrap().lock.unwrap();
        assert_eq!(
            (lock.wait, lock.lease),
            (Duration::from_millis(500), Some(Duration::from_millis(500)))
        );
    }

    #[test]
    fn collects_every_error() {
        let (_, errors) = check_str(r#"ttl = 5, ttl = "1m", soft_timeout, bogus, version = "1""#);
        let message = errors.into_compile_errors().to_string();
        for expected in [
            "string literal",
            "given twice",
            "`soft_timeout` needs a value",
            "unknown option",
            "whole number",
            "missing `key`",
        ] {
            assert!(
                message.contains(expected),
                "{expected:?} missing from {message}"
            );
        }
    }
}
