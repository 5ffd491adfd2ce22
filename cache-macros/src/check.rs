//! Checking the key template (and `cache = ...`) against the function's parameters.
//!
//! - every placeholder names a parameter or `self` (with a "did you mean" hint);
//! - every parameter is in the key or marked `#[cache(skip)]`: two calls that differ only in an
//!   ignored argument would silently share an entry;
//! - a skipped parameter is not in the key.
//!
//! The result says which parameters the generated helpers take.

use crate::args::CachedArgs;
use crate::errors::Errors;
use crate::signature::{FnModel, ReturnKind};
use crate::template::Template;
use proc_macro2::{TokenStream, TokenTree};
use std::collections::BTreeSet;

/// What the templates and the `cache` expression use.
pub(crate) struct Usage {
    /// The `cache` expression reads a parameter (or `self`) taken by value, which the body
    /// moves: the wrapper then clones the `Cache` handle out first.
    pub(crate) cache_reads_owned: bool,
    /// What `<fn>_cache_key` takes: the parameters in the key.
    pub(crate) key: HelperInputs,
    /// What `invalidate_<fn>` takes: those in the key and those the `cache` expression reads.
    pub(crate) invalidate: HelperInputs,
    /// What the `cache` expression reads (what `invalidate_all_<fn>` takes).
    pub(crate) cache: HelperInputs,
    /// What `<fn>_cache_entry` takes: the parameters in the key or a tag.
    pub(crate) entry: HelperInputs,
    /// Per tag template, the parameters it uses.
    pub(crate) tags: Vec<HelperInputs>,
}

/// `stale` and `early` run the body again in the background, after the call returned:
/// everything it takes must be owned. (`Clone + Send + 'static` is checked by the compiler on
/// the generated code; what is refused here is what could never satisfy it.)
fn check_refreshable(option: &str, model: &FnModel, errors: &mut Errors) {
    if let Some(receiver) = model.receiver {
        errors.spanned(
            receiver,
            format!(
                "`{option}` is not available on methods yet: the body may run in the background \
                 after the call returned, which a borrowed `self` cannot outlive; memoize a free \
                 function that takes the handle by value, like `async fn get(repo: Repo, id: u64)`"
            ),
        );
    }
    for param in &model.params {
        if borrows(&param.ty) {
            let name = &param.ident;
            errors.spanned(
                &param.ty,
                format!(
                    "with `{option}`, the body may run in the background after the call \
                     returned, so `{name}` must be owned: take a `Clone + Send + 'static` type, \
                     such as `Arc<Db>` instead of `&Db` or `String` instead of `&str`"
                ),
            );
        }
    }
}

/// Whether `ty` borrows something that does not live forever (`&T`, `'a`).
fn borrows(ty: &syn::Type) -> bool {
    struct Borrows(bool);
    impl<'ast> syn::visit::Visit<'ast> for Borrows {
        fn visit_type_reference(&mut self, reference: &'ast syn::TypeReference) {
            if reference
                .lifetime
                .as_ref()
                .is_none_or(|lifetime| lifetime.ident != "static")
            {
                self.0 = true;
            }
            syn::visit::visit_type_reference(self, reference);
        }
        fn visit_lifetime(&mut self, lifetime: &'ast syn::Lifetime) {
            self.0 |= lifetime.ident != "static";
        }
    }
    let mut visitor = Borrows(false);
    syn::visit::Visit::visit_type(&mut visitor, ty);
    visitor.0
}

/// The inputs of a generated helper.
#[derive(Clone, PartialEq, Eq, Default)]
pub(crate) struct HelperInputs {
    /// Indices into `FnModel::params`, in declaration order.
    pub(crate) params: Vec<usize>,
    /// Whether it takes `&self`.
    pub(crate) takes_self: bool,
}

impl HelperInputs {
    fn new(params: &BTreeSet<usize>, takes_self: bool) -> Self {
        HelperInputs {
            params: params.iter().copied().collect(),
            takes_self,
        }
    }

    /// These inputs and `other`'s.
    pub(crate) fn union(&self, other: &HelperInputs) -> HelperInputs {
        let params: BTreeSet<usize> = self.params.iter().chain(&other.params).copied().collect();
        HelperInputs::new(&params, self.takes_self || other.takes_self)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.params.is_empty() && !self.takes_self
    }
}

/// The parameters a template's placeholders name, and whether one names `self`.
struct Resolved {
    params: BTreeSet<usize>,
    uses_self: bool,
    /// A placeholder named no parameter (an error was reported).
    unresolved: bool,
}

fn resolve(template: &Template, model: &FnModel, errors: &mut Errors) -> Resolved {
    let mut resolved = Resolved {
        params: BTreeSet::new(),
        uses_self: false,
        unresolved: false,
    };
    for placeholder in template.placeholders() {
        if placeholder.root == "self" {
            if model.receiver.is_none() {
                errors.spanned(
                    &template.lit,
                    template.message_at(placeholder.offset, "`self` is only available in methods"),
                );
            } else if placeholder.fields.is_empty() {
                errors.spanned(
                    &template.lit,
                    template.message_at(placeholder.offset, &format!("name a field of `self`, like `<self.tenant>`: the receiver itself is not a {}", template.label)),
                );
            }
            resolved.uses_self = true;
            continue;
        }
        match model
            .params
            .iter()
            .position(|p| p.ident == placeholder.root)
        {
            Some(index) => {
                if model.params[index].skip.is_some() {
                    errors.spanned(
                        &template.lit,
                        template.message_at(
                            placeholder.offset,
                            &format!("`{}` is marked `#[cache(skip)]` but the {} uses it; remove one of the two", placeholder.root, template.label),
                        ),
                    );
                }
                resolved.params.insert(index);
            }
            None => {
                resolved.unresolved = true;
                let names: Vec<String> = model.params.iter().map(|p| p.ident.to_string()).collect();
                let hint = match closest(&placeholder.root, &names) {
                    Some(name) => format!("; did you mean `{name}`?"),
                    None if names.is_empty() => "; the function has no parameters".to_owned(),
                    None => format!(
                        "; the parameters are {}",
                        names
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                errors.spanned(
                    &template.lit,
                    template.message_at(
                        placeholder.offset,
                        &format!("no parameter named `{}`{hint}", placeholder.root),
                    ),
                );
            }
        }
    }
    resolved
}

pub(crate) fn check(args: &CachedArgs, model: &FnModel, errors: &mut Errors) -> Usage {
    let template = &args.key;
    let key = resolve(template, model, errors);
    let tags: Vec<Resolved> = args
        .tags
        .iter()
        .map(|tag| resolve(tag, model, errors))
        .collect();
    let unresolved = key.unresolved || tags.iter().any(|tag| tag.unresolved);
    let in_tags: BTreeSet<usize> = tags
        .iter()
        .flat_map(|tag| tag.params.iter().copied())
        .collect();

    let (cache_idents, cache_uses_self) = args
        .cache
        .as_ref()
        .map_or_else(Default::default, |expr| free_idents(quote::quote!(#expr)));
    if let Some(span) = args.cache_none
        && !matches!(
            model.kind,
            ReturnKind::Optional | ReturnKind::FallibleOptional
        )
    {
        errors.at(span, "`cache_none` applies to functions returning `Option<T>` or `Result<Option<T>, E>`; remove it");
    }
    let background = if args.stale.is_some() {
        Some("stale")
    } else if args.early.is_some() {
        Some("early")
    } else if args.soft_timeout.is_some() {
        Some("soft_timeout")
    } else {
        None
    };
    if let Some(option) = background {
        check_refreshable(option, model, errors);
    }
    if let Some((_, span)) = args.fail_safe
        && !model.kind.can_fail()
    {
        errors.at(span, "`fail_safe` serves the last good value when the function fails, and this one cannot: it applies to functions returning `Result`");
    }
    if let Some((_, span)) = args.hard_timeout
        && !model.kind.can_fail()
    {
        errors.at(span, "`hard_timeout` makes a call that takes too long return an error, which this function cannot: it applies to functions returning `Result<T, E>` where `E: From<redis_memo::TimedOut>`");
    }
    let mut cache_reads_owned = cache_uses_self && model.receiver_by_value;
    let mut read_by_cache = BTreeSet::new();
    for (index, param) in model.params.iter().enumerate() {
        if cache_idents.contains(&param.ident.to_string()) {
            read_by_cache.insert(index);
            cache_reads_owned |= !matches!(param.ty, syn::Type::Reference(_));
        }
        // After an unresolved placeholder (likely a typo of this very parameter), a "not in the
        // key" error would only repeat it. A parameter in a tag only is accounted for: the
        // entry is shared by calls that differ in it, and records the tag of the one that
        // computed it (for values the key determines, like a user's organization).
        let used = key.params.contains(&index) || in_tags.contains(&index);
        if !used && param.skip.is_none() && !unresolved {
            let name = &param.ident;
            errors.spanned(
                name,
                format!(
                    "`{name}` is not in the key `{}`: add `<{name}>` to it, or mark the parameter `#[cache(skip)]` \
                     if calls that differ only in `{name}` may share an entry",
                    template.source
                ),
            );
        }
    }
    let key_inputs = HelperInputs::new(&key.params, key.uses_self);
    let cache_inputs = HelperInputs::new(&read_by_cache, cache_uses_self);
    let tag_inputs: Vec<HelperInputs> = tags
        .iter()
        .map(|tag| HelperInputs::new(&tag.params, tag.uses_self))
        .collect();
    let entry = tag_inputs
        .iter()
        .fold(key_inputs.clone(), |all, tag| all.union(tag));
    Usage {
        cache_reads_owned,
        invalidate: key_inputs.union(&cache_inputs),
        key: key_inputs,
        cache: cache_inputs,
        entry,
        tags: tag_inputs,
    }
}

/// Identifiers in `tokens` that are not field or method names (not after a `.`), and whether
/// `self` is among them.
fn free_idents(tokens: TokenStream) -> (BTreeSet<String>, bool) {
    fn walk(tokens: TokenStream, names: &mut BTreeSet<String>, uses_self: &mut bool) {
        let mut after_dot = false;
        for token in tokens {
            match token {
                TokenTree::Ident(ident) => {
                    if ident == "self" {
                        *uses_self = true;
                    } else if !after_dot {
                        names.insert(ident.to_string());
                    }
                    after_dot = false;
                }
                TokenTree::Punct(punct) => after_dot = punct.as_char() == '.',
                TokenTree::Group(group) => {
                    walk(group.stream(), names, uses_self);
                    after_dot = false;
                }
                TokenTree::Literal(_) => after_dot = false,
            }
        }
    }
    let mut names = BTreeSet::new();
    let mut uses_self = false;
    walk(tokens, &mut names, &mut uses_self);
    (names, uses_self)
}

/// The candidate nearest to `name` by edit distance, if near enough to be a typo.
fn closest<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names_only() {
        let names = vec!["user_id".to_owned(), "org".to_owned()];
        assert_eq!(closest("usr_id", &names), Some("user_id"));
        assert_eq!(closest("tenant", &names), None);
    }

    #[test]
    fn free_idents_skip_fields_and_see_self() {
        let (names, uses_self) = free_idents(quote::quote!(ctx.cache(&self.other, shared)));
        assert!(names.contains("ctx") && names.contains("shared"));
        assert!(!names.contains("cache") && !names.contains("other"));
        assert!(uses_self);
    }
}
