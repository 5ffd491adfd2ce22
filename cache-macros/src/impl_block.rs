//! `#[redis_cached_impl]` on an `impl` block: its `#[redis_cached]` methods are expanded here,
//! the wrappers staying in the block and their helpers (`invalidate_<fn>`, `<fn>_cache_key`,
//! ..) going into an inherent `impl` of the same type next to it. A trait impl can hold only
//! the trait's items, so this is how a memoized method of a trait impl gets its helpers.

use crate::errors::Errors;
use crate::expand::{self, Expansion};
use proc_macro2::TokenStream;
use quote::quote;
use syn::{ImplItem, ItemImpl};

/// The argument with which `#[redis_cached]` leaves a method alone: this block expanded it.
pub(crate) const EXPANDED: &str = "__redis_memo_expanded";

pub(crate) fn redis_cached_impl(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut block = match syn::parse2::<ItemImpl>(item.clone()) {
        Ok(block) => block,
        Err(_) => {
            let error = syn::Error::new(
                proc_macro2::Span::call_site(),
                "`#[redis_cached_impl]` goes on an `impl` block whose methods use `#[redis_cached]`",
            )
            .into_compile_error();
            return quote!(#error #item);
        }
    };
    let mut errors = Errors::default();
    if !args.is_empty() {
        errors.spanned(&args, "`#[redis_cached_impl]` takes no options");
    }
    let in_trait = block.trait_.is_some();
    // The helpers' inherent impl has the block's generics: each must appear in the type, or
    // that impl would not constrain it (E0207).
    let self_ty = &block.self_ty;
    let in_type = expand::names_in(quote!(#self_ty));
    for param in &block.generics.params {
        let name = match param {
            syn::GenericParam::Type(t) => t.ident.to_string(),
            syn::GenericParam::Const(c) => c.ident.to_string(),
            syn::GenericParam::Lifetime(l) => l.lifetime.to_string(),
        };
        if !in_type.contains(&name) {
            errors.spanned(
                param,
                format!(
                    "`{name}` appears only in the trait, not in the type: the memoized methods' \
                     helpers go into an inherent impl of the type, which cannot have it; \
                     memoize a method of an inherent impl and call it from the trait's"
                ),
            );
        }
    }
    let trait_path = block.trait_.as_ref().map(|(path, _)| path.clone());
    let mut helpers = Vec::new();
    let mut error_items = Vec::new();
    for item in &mut block.items {
        let ImplItem::Fn(method) = item else {
            continue;
        };
        let Some(position) = method.attrs.iter().position(is_redis_cached) else {
            continue;
        };
        let attribute = method.attrs.remove(position);
        let args = match &attribute.meta {
            syn::Meta::List(list) => list.tokens.clone(),
            syn::Meta::Path(_) => TokenStream::new(),
            syn::Meta::NameValue(value) => {
                errors.spanned(value, "write the options in parentheses: `#[redis_cached(ttl = \"1m\", key = \"..\")]`");
                continue;
            }
        };
        // `Self::Id` (the trait's associated type) is ambiguous in the inherent impl where
        // the helpers go: `<Self as Trait>::Id` is the same type in both.
        if let Some(trait_path) = &trait_path {
            qualify_self_paths(&mut method.sig, trait_path);
        }
        let as_function = quote!(#method);
        match expand::memoize_function(args, as_function) {
            Ok(Expansion {
                function,
                helpers: method_helpers,
            }) => {
                let syn::ItemFn {
                    mut attrs,
                    sig,
                    block: body,
                    ..
                } = function;
                // The attribute again, as the user wrote its path, saying the work is done: it
                // then returns the method as is, and its import stays used.
                let path = attribute.path();
                let marker = syn::Ident::new(EXPANDED, proc_macro2::Span::call_site());
                attrs.push(syn::parse_quote!(#[#path(#marker)]));
                method.attrs = attrs;
                method.sig = sig;
                method.block = *body;
                // Helpers of a trait's method are as public as the trait's methods.
                helpers.push(if in_trait {
                    publish(method_helpers)
                } else {
                    method_helpers
                });
            }
            // The errors, and the method as written (its `#[cache]` attributes removed).
            Err(tokens) => error_items.push(tokens),
        }
    }
    let errors_free = errors.is_empty();
    let errors = errors.into_compile_errors();
    let mut error_functions = Vec::new();
    for tokens in error_items {
        // `compile_error!`s and the unchanged function: the function replaces the method, the
        // errors go next to the block.
        match syn::parse2::<ErrorsAndFunction>(tokens) {
            Ok(ErrorsAndFunction { errors, function }) => {
                error_functions.push(errors);
                if let Some(ImplItem::Fn(method)) = block.items.iter_mut().find(|item| {
                    matches!(item, ImplItem::Fn(method) if method.sig.ident == function.sig.ident)
                }) {
                    method.attrs = function.attrs;
                    method.sig = function.sig;
                    method.block = *function.block;
                }
            }
            Err(error) => error_functions.push(error.into_compile_error()),
        }
    }
    let (impl_generics, _, where_clause) = block.generics.split_for_impl();
    let self_ty = &block.self_ty;
    // After an error about the block's generics the inherent impl would only add E0207.
    let inherent = (!helpers.is_empty() && errors_free).then(|| {
        quote! {
            impl #impl_generics #self_ty #where_clause {
                #(#helpers)*
            }
        }
    });
    quote! {
        #errors
        #(#error_functions)*
        #block
        #inherent
    }
}

/// Rewrites `Self::X..` in the parameter and return types of `sig` as `<Self as Trait>::X..`.
fn qualify_self_paths(sig: &mut syn::Signature, trait_path: &syn::Path) {
    use syn::visit_mut::VisitMut;
    struct Qualify<'a>(&'a syn::Path);
    impl VisitMut for Qualify<'_> {
        fn visit_type_path_mut(&mut self, ty: &mut syn::TypePath) {
            syn::visit_mut::visit_type_path_mut(self, ty);
            let segments = &ty.path.segments;
            if ty.qself.is_none()
                && segments.len() > 1
                && segments.first().is_some_and(|first| first.ident == "Self")
            {
                let trait_path = self.0;
                let rest: Vec<&syn::PathSegment> = segments.iter().skip(1).collect();
                *ty = syn::parse_quote!(<Self as #trait_path>::#(#rest)::*);
            }
        }
    }
    let mut qualify = Qualify(trait_path);
    for input in &mut sig.inputs {
        if let syn::FnArg::Typed(typed) = input {
            qualify.visit_type_mut(&mut typed.ty);
        }
    }
    if let syn::ReturnType::Type(_, ty) = &mut sig.output {
        qualify.visit_type_mut(ty);
    }
}

fn is_redis_cached(attribute: &syn::Attribute) -> bool {
    attribute
        .path()
        .segments
        .last()
        .is_some_and(|segment| segment.ident == "redis_cached")
}

/// `helpers` with every item made `pub` (a trait's methods have no visibility of their own).
fn publish(helpers: TokenStream) -> TokenStream {
    let Ok(file) = syn::parse2::<syn::File>(helpers.clone()) else {
        return helpers;
    };
    let items = file.items.into_iter().map(|mut item| {
        if let syn::Item::Fn(function) = &mut item
            && matches!(function.vis, syn::Visibility::Inherited)
        {
            function.vis = syn::parse_quote!(pub);
        }
        quote!(#item)
    });
    quote!(#(#items)*)
}

/// What `memoize_function` returns on error: `compile_error!` invocations, then the function.
struct ErrorsAndFunction {
    errors: TokenStream,
    function: syn::ItemFn,
}

impl syn::parse::Parse for ErrorsAndFunction {
    fn parse(input: syn::parse::ParseStream) -> syn::Result<Self> {
        let mut errors = TokenStream::new();
        while !input.is_empty() && input.fork().parse::<syn::ItemFn>().is_err() {
            let tree: proc_macro2::TokenTree = input.parse()?;
            errors.extend(std::iter::once(tree));
        }
        Ok(ErrorsAndFunction {
            errors,
            function: input.parse()?,
        })
    }
}
