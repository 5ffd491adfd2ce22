//! The memoized function's signature as a typed model: its parameters (with their
//! `#[cache(skip)]` markers), receiver and return kind.

use crate::errors::Errors;
use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, Ident, Pat, PathArguments, ReturnType, Signature, Type};

/// A typed parameter of the function.
pub(crate) struct Param {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
    /// Marked `#[cache(skip)]`.
    pub(crate) skip: Option<Span>,
    /// Declared `mut name: T`.
    pub(crate) mutable: bool,
}

/// How the return value maps to what is stored (mirrors the runtime's `ReturnKind`s).
pub(crate) enum ReturnKind {
    /// `T`: stored as is.
    Plain,
    /// `Option<T>`: `None` stored only with `cache_none`.
    Optional,
    /// `Result<T, E>`, or an alias such as `io::Result<T>`: `Err` never stored.
    Fallible,
    /// `Result<Option<T>, E>`: `Err` never stored, `Ok(None)` only with `cache_none`.
    FallibleOptional,
}

pub(crate) struct FnModel {
    pub(crate) params: Vec<Param>,
    /// The `self` token, for methods.
    pub(crate) receiver: Option<syn::Token![self]>,
    /// The method takes `self` by value (not `&self`).
    pub(crate) receiver_by_value: bool,
    pub(crate) output: Type,
    pub(crate) kind: ReturnKind,
    /// The type that is serialized into the cache, for type-check messages.
    pub(crate) stored: Type,
}

/// Reads the signature, reporting what a memoized function cannot be. Strips the
/// `#[cache(...)]` parameter attributes from `sig` so the emitted function compiles even when
/// the attribute has errors.
pub(crate) fn analyze(sig: &mut Signature, errors: &mut Errors) -> Option<FnModel> {
    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            "`#[redis_cached]` memoizes `async fn`s only: make this function `async`",
        );
    }
    let mut params = Vec::new();
    let mut receiver = None;
    let mut receiver_by_value = false;
    let mut params_ok = true;
    for input in &mut sig.inputs {
        match input {
            FnArg::Receiver(recv) => {
                let skip = take_cache_attrs(&mut recv.attrs, errors);
                if let Some(span) = skip {
                    errors.at(span, "`self` is never part of the key; name its fields in the key instead, like `<self.tenant>`");
                }
                let typed_mut = matches!(&recv.kind, syn::ReceiverKind::Typed(_, ty)
                    if matches!(&**ty, Type::Reference(r) if r.mutability.is_some()));
                if recv.mutability.is_some()
                    || typed_mut
                    || matches!(recv.kind, syn::ReceiverKind::Reference(_, _, Some(_)))
                {
                    errors.spanned(&*recv, "memoized methods take `&self` or `self`: a call that mutates its receiver cannot be answered from a cache");
                }
                receiver = Some(recv.self_token);
                receiver_by_value = match &recv.kind {
                    syn::ReceiverKind::Reference(..) => false,
                    syn::ReceiverKind::Typed(_, ty) => !matches!(&**ty, Type::Reference(_)),
                    _ => true,
                };
            }
            FnArg::Typed(typed) => {
                let skip = take_cache_attrs(&mut typed.attrs, errors);
                if let Type::Reference(reference) = &*typed.ty
                    && let Some(mutability) = reference.mutability
                {
                    errors.spanned(
                        mutability,
                        "`&mut` parameters are not allowed: a call that mutates its argument cannot be answered from a cache",
                    );
                }
                match &*typed.pat {
                    Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                        params.push(Param {
                            ident: pat.ident.clone(),
                            ty: (*typed.ty).clone(),
                            skip,
                            mutable: pat.mutability.is_some(),
                        })
                    }
                    other => {
                        params_ok = false;
                        errors.spanned(other, "give this parameter a plain name (`name: Type`) so the key template can refer to it");
                    }
                }
            }
        }
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(variadic, "variadic functions cannot be memoized");
    }
    let output = match &sig.output {
        ReturnType::Type(_, ty) => (**ty).clone(),
        ReturnType::Default => {
            errors.at(
                sig.paren_token.span.close(),
                "a memoized function must return the value to cache: add `-> T`",
            );
            return None;
        }
    };
    if contains_impl_trait(&output) {
        errors.spanned(&output, "`impl Trait` cannot be cached: return a concrete type that implements `Serialize` and `Deserialize`");
        return None;
    }
    let (kind, stored) = classify(&output);
    params_ok.then_some(FnModel {
        params,
        receiver,
        receiver_by_value,
        output,
        kind,
        stored,
    })
}

/// Removes `#[cache(...)]` attributes from a parameter; returns the span of `skip` if given.
fn take_cache_attrs(attrs: &mut Vec<syn::Attribute>, errors: &mut Errors) -> Option<Span> {
    let mut skip = None;
    attrs.retain(|attr| {
        if !attr.path().is_ident("cache") {
            return true;
        }
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                if skip.is_some() {
                    return Err(meta.error("`skip` is given twice"));
                }
                skip = Some(meta.path.span());
                Ok(())
            } else {
                Err(meta.error("unknown parameter option; the only one is `#[cache(skip)]`"))
            }
        });
        if let Err(error) = parsed {
            errors.push(error);
            // Taken as a misspelt `skip`, so the parameter does not also get a "not in the
            // key" error.
            skip.get_or_insert(attr.span());
        } else if skip.is_none() {
            errors.spanned(
                attr,
                "write `#[cache(skip)]` to leave this parameter out of the key",
            );
            skip = Some(attr.span());
        }
        false
    });
    skip
}

pub(crate) fn classify(output: &Type) -> (ReturnKind, Type) {
    if let Type::Path(path) = output
        && path.qself.is_none()
        && let Some(last) = path.path.segments.last()
        && let PathArguments::AngleBracketed(args) = &last.arguments
        && let Some(inner) = args.args.iter().find_map(|arg| match arg {
            GenericArgument::Type(ty) => Some(ty.clone()),
            _ => None,
        })
    {
        if last.ident == "Result" {
            let kind = if is_option(&inner) {
                ReturnKind::FallibleOptional
            } else {
                ReturnKind::Fallible
            };
            return (kind, inner);
        }
        if last.ident == "Option" {
            return (ReturnKind::Optional, output.clone());
        }
    }
    (ReturnKind::Plain, output.clone())
}

/// Whether `ty` is written `Option<..>` (or a path ending in it).
fn is_option(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.qself.is_none()
        && path.path.segments.last().is_some_and(|last| last.ident == "Option"
            && matches!(last.arguments, PathArguments::AngleBracketed(_))))
}

fn contains_impl_trait(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut finder = Finder(false);
    syn::visit::visit_type(&mut finder, ty);
    finder.0
}

impl FnModel {
    pub(crate) fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.ident == name)
    }
}

impl ReturnKind {
    /// Whether a call can fail (`Result<..>`), which `fail_safe` and `hard_timeout` need.
    pub(crate) fn can_fail(&self) -> bool {
        matches!(self, ReturnKind::Fallible | ReturnKind::FallibleOptional)
    }

    pub(crate) fn runtime_name(&self) -> Ident {
        let name = match self {
            ReturnKind::Plain => "Plain",
            ReturnKind::Optional => "Optional",
            ReturnKind::Fallible => "Fallible",
            ReturnKind::FallibleOptional => "FallibleOptional",
        };
        Ident::new(name, Span::call_site())
    }
}

/// Unused-variable-free access to a param's type span for messages.
pub(crate) fn type_span(param: &Param) -> Span {
    param.ty.span()
}
