//! Writing the memoized function and its helpers.
//!
//! For `#[redis_cached(ttl = "15m", key = "user:<id>")] async fn get_user(id: u64, ..) -> R`:
//!
//! - `get_user` itself: renders the key, then hands the original body (as an `async move`
//!   block) to the runtime's `memoize`;
//! - `get_user_cache_key(id: u64) -> String`: the rendered key;
//! - `invalidate_get_user(id: u64) -> Result<bool, CacheError>`: removes the entry.
//!
//! Generated code reaches the runtime only through `<crate>::__private`, and its locals are
//! prefixed `__redis_memo_`.

use crate::args::{self, CachedArgs, RawOptions};
use crate::check::{self, HelperInputs, Usage};
use crate::errors::Errors;
use crate::signature::{self, FnModel};
use crate::template::Segment;
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, Type};

pub(crate) fn redis_cached(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "`#[redis_cached]` goes on an `async fn`, free or in an `impl` block",
            );
            let error = error.into_compile_error();
            return quote!(#error #item);
        }
    };
    let mut errors = Errors::default();
    let attr_span = if args.is_empty() {
        Span::call_site()
    } else {
        args.span()
    };
    let options = match syn::parse2::<RawOptions>(args) {
        Ok(raw) => args::check(raw, attr_span, &mut errors),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let model = signature::analyze(&mut function.sig, &mut errors);
    let (Some(options), Some(model)) = (options, model) else {
        return with_errors(errors, &function);
    };
    let usage = check::check(&options, &model, &mut errors);
    if !errors.is_empty() {
        return with_errors(errors, &function);
    }
    let Expansion {
        function: wrapper,
        helpers,
    } = expand(&options, &model, &usage, function);
    quote!(#wrapper #helpers)
}

/// `compile_error!`s next to the function as written (its `#[cache]` parameter attributes
/// removed), so the rest of the crate still type-checks and IDEs keep working.
fn with_errors(errors: Errors, function: &ItemFn) -> TokenStream {
    let errors = errors.into_compile_errors();
    quote!(#errors #function)
}

struct Expansion {
    function: ItemFn,
    helpers: TokenStream,
}

fn expand(options: &CachedArgs, model: &FnModel, usage: &Usage, mut function: ItemFn) -> Expansion {
    let krate = &options.krate;
    let private = quote!(#krate::__private);
    let name = &function.sig.ident;
    let name_text = name.to_string();
    let template_text = &options.key.source;
    let ttl_ms = u64::try_from(options.ttl.as_millis()).unwrap_or(u64::MAX);
    let version = options.version;
    let cache_none = options.cache_none.is_some();
    let lock = options.lock.as_ref().map(|lock| {
        let wait_ms = u64::try_from(lock.wait.as_millis()).unwrap_or(u64::MAX);
        let lease = lock.lease.map(|lease| {
            let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
            quote!(.lease(#private::Duration::from_millis(#lease_ms)))
        });
        quote!(.lock(#private::Duration::from_millis(#wait_ms)) #lease)
    });
    let kind = model.kind.runtime_name();
    let output = &model.output;
    let stored = &model.stored;

    let select_cache = select_cache(options, &private, usage.cache_reads_owned);
    let render = render_key(options, model, quote!(#private::KeyWriter::new()), &private);
    let render_entry_key = render_key(
        options,
        model,
        quote!(#private::entry_key_writer(__redis_memo_cache)),
        &private,
    );
    let body = &function.block;
    // Every token of the callee carries the stored type's span, so a value type that is not
    // serializable is reported on the user's type rather than on the whole attribute.
    let memoize_call = respan(
        quote!(#private::memoize::<#private::#kind, _, _>),
        stored.span(),
    );
    let new_body = quote! {
        static __REDIS_MEMO_SPEC: #private::FnSpec = #private::FnSpec::new(
            #name_text,
            ::core::concat!(::core::module_path!(), "::", #name_text),
            #template_text,
            #private::Duration::from_millis(#ttl_ms),
        )
        .version(#version)
        .cache_none(#cache_none)
        #lock;
        #select_cache
        let __redis_memo_key: ::std::string::String = #render_entry_key;
        let __redis_memo_body = async move {
            // Pins the block's output type for `?` and `return` in the body (as in
            // tracing-attributes).
            #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::let_unit_value)]
            if false {
                let __redis_memo_fake_return: #output = loop {};
                return __redis_memo_fake_return;
            }
            #body
        };
        // The body's type names the function with its `Self` and generic arguments, so
        // instantiations and same-named methods of different types never share entries.
        let __redis_memo_instance: &'static str = ::core::any::type_name_of_val(&__redis_memo_body);
        #memoize_call(__redis_memo_cache, &__REDIS_MEMO_SPEC, __redis_memo_key, __redis_memo_instance, __redis_memo_body)
            .await
    };
    // Kept as tokens (not re-parsed): the body is the user's, already parsed once.
    function.block = Box::new(syn::Block {
        brace_token: function.block.brace_token,
        stmts: vec![syn::Stmt::Expr(syn::Expr::Verbatim(new_body), None)],
    });

    let helpers = helpers(
        options,
        model,
        usage,
        &function,
        &private,
        &select_cache,
        &render,
    );
    Expansion { function, helpers }
}

/// Binds `__redis_memo_cache: Option<&Cache>`: from `cache = <expr>` (anything that borrows
/// as a `Cache`: `&Cache`, `Cache`, `Arc<Cache>`) or the installed global cache. When the
/// expression reads a parameter the body takes by value, the handle is cloned out first (a
/// reference count), so the body can still move that parameter.
fn select_cache(options: &CachedArgs, private: &TokenStream, clone_out: bool) -> TokenStream {
    match &options.cache {
        Some(expr) => {
            let borrow = quote_spanned! {expr.span()=>
                <_ as #private::Borrow<#private::Cache>>::borrow(&(#expr))
            };
            if clone_out {
                quote! {
                    let __redis_memo_cache_owned: #private::Cache = ::core::clone::Clone::clone(#borrow);
                    let __redis_memo_cache: ::core::option::Option<&#private::Cache> =
                        ::core::option::Option::Some(&__redis_memo_cache_owned);
                }
            } else {
                let borrow = quote_spanned! {expr.span()=>
                    <_ as #private::Borrow<#private::Cache>>::borrow(__redis_memo_cache_ref)
                };
                quote! {
                    let __redis_memo_cache_ref = &(#expr);
                    let __redis_memo_cache: ::core::option::Option<&#private::Cache> =
                        ::core::option::Option::Some(#borrow);
                }
            }
        }
        None => quote! {
            let __redis_memo_cache: ::core::option::Option<&#private::Cache> = #private::global();
        },
    }
}

/// An expression rendering the key from the parameters in scope, into the `KeyWriter` that
/// `writer_init` creates.
fn render_key(
    options: &CachedArgs,
    model: &FnModel,
    writer_init: TokenStream,
    private: &TokenStream,
) -> TokenStream {
    let writer = quote!(__redis_memo_writer);
    let mut steps = Vec::new();
    for segment in &options.key.segments {
        match segment {
            Segment::Literal(text) => {
                steps.push(quote!(#private::write_literal(&mut #writer, #text);));
            }
            Segment::Placeholder(placeholder) => {
                let root = if placeholder.root == "self" {
                    let self_token = model.receiver.unwrap_or_default();
                    quote!(#self_token)
                } else {
                    // `check` refused placeholders that name no parameter.
                    let Some(param) = model.param(&placeholder.root) else {
                        continue;
                    };
                    let ident = &param.ident;
                    if placeholder.fields.is_empty() && !contains_impl_trait(&param.ty) {
                        // With the parameter's type spelled out, a missing `KeyPart` impl is
                        // reported on the user's type.
                        let ty = &param.ty;
                        steps.push(quote_spanned! {signature::type_span(param)=>
                            #writer.placeholder::<#ty>(&#ident);
                        });
                        continue;
                    }
                    quote!(#ident)
                };
                let fields = placeholder
                    .fields
                    .iter()
                    .map(|field| match field.parse::<u32>() {
                        Ok(index) => {
                            let index = syn::Index {
                                index,
                                span: options.key.lit.span(),
                            };
                            quote!(.#index)
                        }
                        Err(_) => {
                            let ident = syn::Ident::new(field, options.key.lit.span());
                            quote!(.#ident)
                        }
                    });
                steps.push(quote_spanned! {options.key.lit.span()=>
                    #writer.placeholder(&(#root #(#fields)*));
                });
            }
        }
    }
    quote! {{
        let mut #writer = #writer_init;
        #(#steps)*
        #writer.finish()
    }}
}

fn contains_impl_trait(ty: &Type) -> bool {
    quote!(#ty)
        .into_iter()
        .any(|token| matches!(token, proc_macro2::TokenTree::Ident(ident) if ident == "impl"))
}

fn helpers(
    options: &CachedArgs,
    model: &FnModel,
    usage: &Usage,
    function: &ItemFn,
    private: &TokenStream,
    select_cache: &TokenStream,
    render: &TokenStream,
) -> TokenStream {
    let vis = &function.vis;
    let name = &function.sig.ident;
    let key_fn = format_ident!("{}_cache_key", name);
    let invalidate_fn = format_ident!("invalidate_{}", name);
    let generics = &function.sig.generics;
    let key_params = helper_inputs(model, &usage.key);
    let invalidate_params = helper_inputs(model, &usage.invalidate);
    let cache_expr = options
        .cache
        .as_ref()
        .map(|expr| quote!(#expr))
        .unwrap_or_default();
    let (key_generics, key_where) = helper_generics(generics, &key_params, TokenStream::new());
    let (invalidate_generics, invalidate_where) =
        helper_generics(generics, &invalidate_params, cache_expr);
    let key_doc = format!(
        " The rendered cache key of [`{name}`] for these arguments (template `{}`); the Redis key is \
         `<namespace>:{{<this>}}`, see `Cache::full_key`.",
        options.key.source
    );
    let invalidate_doc = format!(
        " Removes the cached entry of [`{name}`] for these arguments; `Ok(true)` if there was one."
    );
    quote! {
        #[doc = #key_doc]
        #[allow(dead_code, clippy::needless_pass_by_value, clippy::ptr_arg)]
        #vis fn #key_fn #key_generics (#key_params) -> ::std::string::String #key_where {
            #render
        }

        #[doc = #invalidate_doc]
        #[doc = ""]
        #[doc = " # Errors"]
        #[doc = " When Redis fails or times out (a lost invalidation must not pass silently), or no cache is installed."]
        #[allow(dead_code, clippy::needless_pass_by_value, clippy::ptr_arg)]
        #vis async fn #invalidate_fn #invalidate_generics (#invalidate_params) -> ::core::result::Result<bool, #private::CacheError> #invalidate_where {
            #select_cache
            let __redis_memo_key: ::std::string::String = #render;
            #private::invalidate(__redis_memo_cache, __redis_memo_key).await
        }
    }
}

/// `&self, a: A, b: B` for a helper's signature.
fn helper_inputs(model: &FnModel, inputs: &HelperInputs) -> TokenStream {
    let receiver = inputs.takes_self.then(|| quote!(&self,));
    let params = inputs.params.iter().map(|&index| {
        let param = &model.params[index];
        let (ident, ty) = (&param.ident, &param.ty);
        quote!(#ident: #ty)
    });
    quote!(#receiver #(#params),*)
}

/// `tokens` with every span set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let proc_macro2::TokenTree::Group(group) = &token {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                token = proc_macro2::TokenTree::Group(inner);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}

/// The function's generic parameters that a helper needs, and the where predicates on them:
/// those its parameters (or `also_used`, the `cache` expression) mention, and, transitively,
/// those the bounds of these mention. A helper that took them all could not infer the ones its
/// arguments do not determine (`invalidate_get::<D>(7)` for a skipped `db: &D`).
fn helper_generics(
    generics: &syn::Generics,
    params: &TokenStream,
    also_used: TokenStream,
) -> (TokenStream, TokenStream) {
    let name_of = |param: &syn::GenericParam| match param {
        syn::GenericParam::Type(t) => t.ident.to_string(),
        syn::GenericParam::Const(c) => c.ident.to_string(),
        syn::GenericParam::Lifetime(l) => l.lifetime.to_string(),
    };
    let predicates: Vec<&syn::WherePredicate> = generics
        .where_clause
        .iter()
        .flat_map(|w| w.predicates.iter())
        .collect();
    let mut mentioned = names_in(params.clone());
    mentioned.extend(names_in(also_used));
    loop {
        let before = mentioned.len();
        for param in &generics.params {
            if mentioned.contains(&name_of(param)) {
                mentioned.extend(names_in(quote!(#param)));
            }
        }
        for predicate in &predicates {
            let names = names_in(quote!(#predicate));
            if generics
                .params
                .iter()
                .any(|p| mentioned.contains(&name_of(p)) && names.contains(&name_of(p)))
            {
                mentioned.extend(names);
            }
        }
        if mentioned.len() == before {
            break;
        }
    }
    let kept: Vec<_> = generics
        .params
        .iter()
        .filter(|p| mentioned.contains(&name_of(p)))
        .collect();
    let kept_predicates: Vec<_> = predicates
        .iter()
        .filter(|predicate| {
            let names = names_in(quote!(#predicate));
            generics
                .params
                .iter()
                .any(|p| mentioned.contains(&name_of(p)) && names.contains(&name_of(p)))
        })
        .collect();
    let generics = if kept.is_empty() {
        quote!()
    } else {
        quote!(<#(#kept),*>)
    };
    let where_clause = if kept_predicates.is_empty() {
        quote!()
    } else {
        quote!(where #(#kept_predicates),*)
    };
    (generics, where_clause)
}

/// Identifiers and lifetimes (`'a`) in `tokens`.
fn names_in(tokens: TokenStream) -> std::collections::HashSet<String> {
    let mut names = std::collections::HashSet::new();
    let mut lifetime_tick = false;
    for token in tokens {
        match token {
            proc_macro2::TokenTree::Ident(ident) => {
                let name = ident.to_string();
                names.insert(if lifetime_tick {
                    format!("'{name}")
                } else {
                    name
                });
                lifetime_tick = false;
            }
            proc_macro2::TokenTree::Punct(punct) => lifetime_tick = punct.as_char() == '\'',
            proc_macro2::TokenTree::Group(group) => {
                names.extend(names_in(group.stream()));
                lifetime_tick = false;
            }
            proc_macro2::TokenTree::Literal(_) => lifetime_tick = false,
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(args: &str, item: &str) -> String {
        redis_cached(syn::parse_str(args).unwrap(), syn::parse_str(item).unwrap()).to_string()
    }

    #[test]
    fn emits_the_wrapper_and_both_helpers() {
        let out = expand_str(
            r#"ttl = "1m", key = "user:<id>""#,
            "async fn get_user(id: u64, #[cache(skip)] db: &Db) -> Result<User, E> { db.load(id).await }",
        );
        assert!(out.contains("fn get_user"));
        assert!(out.contains("fn get_user_cache_key (id : u64)"), "{out}");
        assert!(
            out.contains("async fn invalidate_get_user (id : u64)"),
            "{out}"
        );
        assert!(out.contains("Fallible"));
        assert!(
            !out.contains("# [cache"),
            "parameter attributes are stripped: {out}"
        );
    }

    #[test]
    fn on_error_emits_the_function_unchanged_and_no_helpers() {
        let out = expand_str(
            r#"ttl = "1m", key = "user:<idd>""#,
            "async fn get_user(id: u64, #[cache(skip)] db: &Db) -> u64 { id }",
        );
        assert!(out.contains("compile_error"));
        assert!(
            out.contains("async fn get_user (id : u64 , db : & Db) -> u64 { id }"),
            "{out}"
        );
        assert!(!out.contains("get_user_cache_key"));
    }
}
