//! Writing the memoized function and its helpers.
//!
//! For `#[redis_cached(ttl = "15m", key = "user:<id>")] async fn get_user(id: u64, ..) -> R`:
//!
//! - `get_user` itself: renders the key, then hands the original body (as an `async move`
//!   block) to the runtime's `memoize`;
//! - `get_user_cache_key(id: u64) -> String`: the rendered key;
//! - `invalidate_get_user(id: u64) -> Result<bool, CacheError>`: removes the entry;
//! - with `invalidate_all`, `invalidate_all_get_user()`: invalidates every entry of the function
//!   (its implicit tag);
//! - `invalidate_get_user_by_<params>(..)`, per set of parameters used by `tags`: invalidates
//!   the tags rendered from them;
//! - hidden `get_user_cache_entry(..)` and `get_user_cache_function()`, through which
//!   `#[redis_cache_put]` and `#[redis_cache_evict]` name the function's entries.
//!
//! Generated code reaches the runtime only through `<crate>::__private`, and its locals are
//! prefixed `__redis_memo_`.

use crate::args::{self, CachedArgs, RawOptions};
use crate::check::{self, HelperInputs, Usage};
use crate::errors::Errors;
use crate::signature::{self, FnModel};
use crate::template::{Segment, Template};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, Type};

pub(crate) fn redis_cached(args: TokenStream, item: TokenStream) -> TokenStream {
    // Left by `#[redis_cached_impl]` on a method it expanded already.
    if args.to_string() == crate::impl_block::EXPANDED {
        return item;
    }
    match memoize_function(args, item) {
        Ok(Expansion { function, helpers }) => quote!(#function #helpers),
        Err(tokens) => tokens,
    }
}

/// The wrapper of the attributed function and its helpers, apart (`#[redis_cached_impl]`
/// puts them in different `impl` blocks); or, on error, the errors next to the function as
/// written.
pub(crate) fn memoize_function(
    args: TokenStream,
    item: TokenStream,
) -> Result<Expansion, TokenStream> {
    let (mut function, attr_span) = parse_item("#[redis_cached]", &args, item)?;
    let mut errors = Errors::default();
    let options = match syn::parse2::<RawOptions>(args) {
        Ok(raw) => args::check(raw, attr_span, &mut errors),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let model = signature::analyze(&mut function.sig, &mut errors);
    let (Some(options), Some(model)) = (options, model) else {
        return Err(with_errors(errors, &function));
    };
    let usage = check::check(&options, &model, &mut errors);
    if !errors.is_empty() {
        return Err(with_errors(errors, &function));
    }
    Ok(expand(&options, &model, &usage, function))
}

/// The attributed `async fn`, and where to report errors about the attribute as a whole; or,
/// for anything but a function, an error next to the item as written.
pub(crate) fn parse_item(
    attribute: &str,
    args: &TokenStream,
    item: TokenStream,
) -> Result<(ItemFn, Span), TokenStream> {
    match syn::parse2::<ItemFn>(item.clone()) {
        Ok(function) => {
            let attr_span = if args.is_empty() {
                Span::call_site()
            } else {
                args.span()
            };
            Ok((function, attr_span))
        }
        Err(_) => {
            let message =
                format!("`{attribute}` goes on an `async fn`, free or in an `impl` block");
            let error = syn::Error::new(Span::call_site(), message).into_compile_error();
            Err(quote!(#error #item))
        }
    }
}

/// `compile_error!`s next to the function as written (its `#[cache]` parameter attributes
/// removed), so the rest of the crate still type-checks and IDEs keep working.
fn with_errors(errors: Errors, function: &ItemFn) -> TokenStream {
    let errors = errors.into_compile_errors();
    quote!(#errors #function)
}

pub(crate) struct Expansion {
    pub(crate) function: ItemFn,
    pub(crate) helpers: TokenStream,
}

fn expand(options: &CachedArgs, model: &FnModel, usage: &Usage, mut function: ItemFn) -> Expansion {
    let krate = &options.krate;
    let private = quote!(#krate::__private);
    let name = &function.sig.ident;
    let spec = spec_static(options, &name.to_string(), &private);
    let kind = model.kind.runtime_name();
    let output = &model.output;
    let stored = &model.stored;

    let select_cache = select_cache(options.cache.as_ref(), &private, usage.cache_reads_owned);
    let render_entry_key = render_template(
        &options.key,
        model,
        quote!(#private::entry_key_writer(__redis_memo_cache)),
        &private,
        Params::ByValue,
    );
    let render_tags = render_tags(
        options.tags.iter(),
        model,
        quote!(#private::tag_key_writer(__redis_memo_cache)),
        &private,
        Params::ByValue,
    );
    // The body's statements, not its block: braces around a one-line body would be
    // reported (`unused_braces`) on the user's tokens.
    let body = &function.block.stmts;
    // Every token of the callee carries the stored type's span, so a value type that is not
    // serializable is reported on the user's type rather than on the whole attribute.
    let memoize_call = respan(
        quote!(#private::memoize::<#private::#kind, _, _, _, _, _>),
        stored.span(),
    );
    let key_types = key_types(model, usage, false);
    let body_block = quote! {
        async move {
            // Pins the block's output type for `?` and `return` in the body (as in
            // tracing-attributes).
            #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::let_unit_value)]
            if false {
                let __redis_memo_fake_return: #output = loop {};
                return __redis_memo_fake_return;
            }
            #(#body)*
        }
    };
    let background =
        options.stale.is_some() || options.early.is_some() || options.soft_timeout.is_some();
    let (compute, refresh) = if background {
        // The body mutates its own copies of the parameters, not the originals.
        for input in &mut function.sig.inputs {
            if let syn::FnArg::Typed(typed) = input
                && let syn::Pat::Ident(pat) = &mut *typed.pat
            {
                pat.mutability = None;
            }
        }
        stale_compute(model, body_block, &private)
    } else {
        (
            quote!(let __redis_memo_body = #body_block;),
            quote!(#private::NoRefresh),
        )
    };
    let on_timeout = if options.hard_timeout.is_some() {
        quote!(#private::TimeoutAsError)
    } else {
        quote!(#private::NoTimeoutError)
    };
    let new_body = quote! {
        #spec
        #key_types
        #select_cache
        let __redis_memo_key: ::std::string::String = #render_entry_key;
        let __redis_memo_tags: ::std::vec::Vec<::std::string::String> = #render_tags;
        #compute
        // The body's type names the function's owner (the `impl` type of a method), so
        // same-named methods of different types never share entries.
        let __redis_memo_body_type: &'static str = ::core::any::type_name_of_val(&__redis_memo_body);
        #memoize_call(
            __redis_memo_cache,
            &__REDIS_MEMO_SPEC,
            __redis_memo_key,
            __redis_memo_tags,
            [__redis_memo_body_type, __redis_memo_key_types],
            __redis_memo_body,
            #refresh,
            #on_timeout,
            // `CloneFailure` when the error type is `Clone`, else `TakeTurns`.
            {
                use #private::{PickCloneFailure as _, PickTakeTurns as _};
                (&#private::FailureSharing::<#output>::new()).pick()
            },
            // The error's `Debug` text for logs, when it has one.
            {
                use #private::{PickDebugText as _, PickNoText as _};
                (&#private::FailureText::<#output>::new()).pick()
            },
        )
        .await
    };
    // Kept as tokens (not re-parsed): the body is the user's, already parsed once.
    function.block = Box::new(syn::Block {
        brace_token: function.block.brace_token,
        stmts: vec![syn::Stmt::Expr(syn::Expr::Verbatim(new_body), None)],
    });

    let helpers = helpers(options, model, usage, &function, &private, &spec);
    Expansion { function, helpers }
}

/// Binds `__redis_memo_key_types`: the type name of a tuple of references to the parameters
/// that the key and tags are rendered from. Generic parameters rendered alike (`1u8`, `"1"`)
/// thus never share entries, and the function and its `_cache_entry` helper, which takes the
/// same parameters, agree.
fn key_types(model: &FnModel, usage: &Usage, by_reference: bool) -> TokenStream {
    let params = usage
        .entry
        .params
        .iter()
        .map(|&index| &model.params[index].ident);
    // A tuple of `&T`s: references are taken here, or the parameters are references already.
    let borrow = (!by_reference).then(|| quote!(&));
    quote! {
        let __redis_memo_key_types: &'static str = ::core::any::type_name_of_val(&(#(#borrow #params,)*));
    }
}

/// With `stale`, the body is built by a factory of `'static` futures, each from its own clones
/// of the parameters (moved into the factory once the key is rendered): the call's own
/// computation is one of them (made only when it runs), a background refresh another.
/// Binds `__redis_memo_body` and returns the `refresh` argument of `memoize`.
fn stale_compute(
    model: &FnModel,
    body_block: TokenStream,
    private: &TokenStream,
) -> (TokenStream, TokenStream) {
    // Each copy is made by a function whose bound says what `stale` needs, on the
    // parameter's type.
    let copies = model.params.iter().map(|param| {
        let ident = &param.ident;
        // `mut` moves here from the signature (see `expand`); the body may not use the copy
        // (a parameter of the key or the `cache` expression only).
        let mutability = param.mutable.then(|| quote!(mut));
        quote_spanned! {param.ty.span()=>
            #[allow(unused_variables, unused_mut)]
            let #mutability #ident = #private::refresh_copy(&#ident);
        }
    });
    let compute = quote! {
        let __redis_memo_factory = move || {
            #(#copies)*
            #body_block
        };
        let __redis_memo_body = {
            let __redis_memo_factory = &__redis_memo_factory;
            async move { __redis_memo_factory().await }
        };
    };
    (compute, quote!(&__redis_memo_factory))
}

/// `static __REDIS_MEMO_SPEC: FnSpec = ..;`, the function's compile-time facts. The function
/// and each helper that needs them declare their own copy (a `static` cannot be shared between
/// the items of an `impl` block); the runtime identifies a function by its facts, not by the
/// address of the static.
fn spec_static(options: &CachedArgs, name_text: &str, private: &TokenStream) -> TokenStream {
    let template_text = &options.key.source;
    let duration = |duration: std::time::Duration| {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        quote!(#private::Duration::from_millis(#millis))
    };
    let ttl = duration(options.ttl);
    let version = options.version;
    let cache_none = options.cache_none.is_some();
    let lock = options.lock.as_ref().map(|lock| {
        let wait = duration(lock.wait);
        let lease = lock.lease.map(|lease| {
            let lease = duration(lease);
            quote!(.lease(#lease))
        });
        quote!(.lock(#wait) #lease)
    });
    let tags = options.tags.iter().map(|tag| &tag.source);
    let invalidate_all = options.invalidate_all;
    let jitter = options.jitter_per_mille;
    let early = options.early.is_some();
    let local = options.local.map(|max_age| {
        let max_age = duration(max_age);
        quote!(.local(#max_age))
    });
    let sliding = options.sliding.as_ref().map(|sliding| {
        let max_age = match sliding.max_age {
            Some((max_age, _)) => duration(max_age),
            None => quote!(#private::FnSpec::NO_MAX_AGE),
        };
        quote!(.sliding(#max_age))
    });
    // The optional durations of the freshness options, each through its setter.
    let freshness = [
        ("stale", options.stale),
        ("fail_safe", options.fail_safe),
        ("soft_timeout", options.soft_timeout),
        ("hard_timeout", options.hard_timeout),
    ]
    .into_iter()
    .filter_map(|(setter, option)| {
        let setter = format_ident!("{setter}");
        let value = duration(option?.0);
        Some(quote!(.#setter(#value)))
    });
    quote! {
        static __REDIS_MEMO_SPEC: #private::FnSpec = #private::FnSpec::new(
            #name_text,
            ::core::concat!(::core::module_path!(), "::", #name_text),
            #template_text,
            #ttl,
        )
        .version(#version)
        .cache_none(#cache_none)
        .tags(&[#(#tags),*])
        .invalidate_all(#invalidate_all)
        .jitter_per_mille(#jitter)
        #(#freshness)*
        .early(#early)
        #local
        #sliding
        #lock;
    }
}

/// `vec![..]` of the renderings of `tags` into writers that `writer_init` creates.
pub(crate) fn render_tags<'a>(
    tags: impl Iterator<Item = &'a Template>,
    model: &FnModel,
    writer_init: TokenStream,
    private: &TokenStream,
    params: Params,
) -> TokenStream {
    let rendered =
        tags.map(|tag| render_template(tag, model, writer_init.clone(), private, params));
    quote!(::std::vec![#(#rendered),*])
}

/// Binds `__redis_memo_cache: Option<&Cache>`: from `cache = <expr>` (anything that borrows
/// as a `Cache`: `&Cache`, `Cache`, `Arc<Cache>`) or the installed global cache. When the
/// expression reads a parameter the body takes by value, the handle is cloned out first (a
/// reference count), so the body can still move that parameter.
pub(crate) fn select_cache(
    cache: Option<&syn::Expr>,
    private: &TokenStream,
    clone_out: bool,
) -> TokenStream {
    match cache {
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
        // The task's scoped cache (`with_cache`, in tests), else the installed one.
        None => quote! {
            let __redis_memo_cache_scoped: ::core::option::Option<#private::Cache> = #private::scoped();
            let __redis_memo_cache: ::core::option::Option<&#private::Cache> =
                match &__redis_memo_cache_scoped {
                    ::core::option::Option::Some(__redis_memo_scoped) => ::core::option::Option::Some(__redis_memo_scoped),
                    ::core::option::Option::None => #private::global(),
                };
        },
    }
}

/// How the parameters a template reads are in scope where it is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Params {
    /// As the function declares them.
    ByValue,
    /// As references to those (the hidden entry helper's).
    ByReference,
}

/// An expression rendering `template` from the parameters in scope, into the `KeyWriter` that
/// `writer_init` creates.
pub(crate) fn render_template(
    template: &Template,
    model: &FnModel,
    writer_init: TokenStream,
    private: &TokenStream,
    params: Params,
) -> TokenStream {
    let writer = quote!(__redis_memo_writer);
    let mut steps = Vec::new();
    for segment in &template.segments {
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
                    // A field is read through the parameter's own type wherever the template is
                    // rendered, so a misspelt field is one error (rustc merges identical ones),
                    // not one per helper.
                    match params {
                        Params::ByValue => quote!(#ident),
                        Params::ByReference => quote!((*#ident)),
                    }
                };
                let fields = placeholder
                    .fields
                    .iter()
                    .map(|field| match field.parse::<u32>() {
                        Ok(index) => {
                            let index = syn::Index {
                                index,
                                span: template.lit.span(),
                            };
                            quote!(.#index)
                        }
                        Err(_) => {
                            // Pointing at the template, but from the expansion: rustc's
                            // suggestion for a misspelt field would replace the whole template
                            // string with the field's name.
                            let span = template.lit.span().resolved_at(Span::mixed_site());
                            let ident = syn::Ident::new(field, span);
                            quote!(.#ident)
                        }
                    });
                steps.push(quote_spanned! {template.lit.span()=>
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
    spec: &TokenStream,
) -> TokenStream {
    let vis = &function.vis;
    let name = &function.sig.ident;
    let generics = &function.sig.generics;
    let cache_expr = cache_tokens(options);
    // Helpers take the handle by reference where the function may take it by value.
    let select_cache = select_cache(options.cache.as_ref(), private, false);
    let plain_writer = quote!(#private::KeyWriter::new());
    let render_key = render_template(
        &options.key,
        model,
        plain_writer.clone(),
        private,
        Params::ByValue,
    );
    let allow = quote!(#[allow(dead_code, clippy::needless_pass_by_value, clippy::ptr_arg)]);
    let errors_doc = quote! {
        #[doc = ""]
        #[doc = " # Errors"]
        #[doc = " When Redis fails or times out (a lost invalidation must not pass silently), or no cache is installed."]
    };
    // Names the helper's owner for the runtime, as the function's body does.
    let probe = quote! {
        let __redis_memo_probe = async {};
        let __redis_memo_body_type: &'static str = ::core::any::type_name_of_val(&__redis_memo_probe);
    };

    let key_fn = format_ident!("{}_cache_key", name);
    let key_params = helper_inputs(model, &usage.key);
    let (key_generics, key_where) = helper_generics(generics, &key_params, TokenStream::new());
    let key_doc = format!(
        " The rendered cache key of [`{name}`] for these arguments (template `{}`); the Redis key is \
         `<namespace>:{{<this>}}`, see `Cache::full_key`.",
        options.key.source
    );

    let invalidate_fn = format_ident!("invalidate_{}", name);
    let invalidate_params = helper_inputs(model, &usage.invalidate);
    let (invalidate_generics, invalidate_where) =
        helper_generics(generics, &invalidate_params, cache_expr.clone());
    let invalidate_doc = format!(
        " Removes the cached entry of [`{name}`] for these arguments; `Ok(true)` if there was one."
    );

    let all_fn = format_ident!("invalidate_all_{}", name);
    let all_params = helper_inputs(model, &usage.cache);
    let (all_generics, all_where) = helper_generics(generics, &all_params, cache_expr.clone());
    let all_doc = format!(
        " Invalidates every entry of [`{name}`], with one Redis command whatever their number; \
         `Ok(true)` if it had entries."
    );

    let invalidate_many = many_helper(
        &Many {
            private,
            model,
            function,
            helper: format_ident!("invalidate_{}_many", name),
            items: &usage.key,
            cache: &usage.cache,
            cache_expr: cache_expr.clone(),
            select_cache: &select_cache,
            doc: format!(
                " [`invalidate_{name}`] for many argument sets at once: each entry removed with its \
                 lease, in one round trip (pipelined); how many there were. An item is the tuple of \
                 the key's arguments (the argument itself when there is one)."
            ),
        },
        quote!(__redis_memo_keys.push(#render_key);),
        quote!(#private::invalidate_many(__redis_memo_cache, __redis_memo_keys).await),
    );
    let tag_helpers = tag_helpers(options, model, usage, function, private, &select_cache);
    let (invalidate_all, function_companion) = if options.invalidate_all {
        let function_fn = format_ident!("{}_cache_function", name);
        (
            quote! {
                #[doc = #all_doc]
                #errors_doc
                #allow
                #vis async fn #all_fn #all_generics (#all_params) -> ::core::result::Result<bool, #private::CacheError> #all_where {
                    #spec
                    #select_cache
                    #probe
                    #private::invalidate_all(
                        __redis_memo_cache,
                        #private::FunctionRef::new(&__REDIS_MEMO_SPEC, __redis_memo_body_type),
                    ).await
                }
            },
            quote! {
                #[doc(hidden)]
                #allow
                #vis fn #function_fn() -> #private::FunctionRef {
                    #spec
                    #probe
                    #private::FunctionRef::new(&__REDIS_MEMO_SPEC, __redis_memo_body_type)
                }
            },
        )
    } else {
        // `all_of = <fn>` then fails to compile with a message that names the missing option.
        let function_fn = format_ident!("{}_cache_function", name);
        (
            TokenStream::new(),
            quote! {
                #[doc(hidden)]
                #allow
                #vis fn #function_fn() -> #private::WithoutInvalidateAll {
                    #private::WithoutInvalidateAll
                }
            },
        )
    };

    let entry_fn = format_ident!("{}_cache_entry", name);
    // By reference: a writer names the entry before its body, which may move what it reads.
    let entry_params = helper_inputs_by_reference(model, &usage.entry);
    let stored = &model.stored;
    let kind = model.kind.runtime_name();
    let (entry_generics, entry_where) = helper_generics(generics, &entry_params, quote!(#stored));
    let entry_key = render_template(
        &options.key,
        model,
        plain_writer.clone(),
        private,
        Params::ByReference,
    );
    let render_tags = render_tags(
        options.tags.iter(),
        model,
        plain_writer,
        private,
        Params::ByReference,
    );
    let key_types = key_types(model, usage, true);

    quote! {
        #[doc = #key_doc]
        #allow
        #vis fn #key_fn #key_generics (#key_params) -> ::std::string::String #key_where {
            #render_key
        }

        #[doc = #invalidate_doc]
        #errors_doc
        #allow
        #vis async fn #invalidate_fn #invalidate_generics (#invalidate_params) -> ::core::result::Result<bool, #private::CacheError> #invalidate_where {
            #select_cache
            let __redis_memo_key: ::std::string::String = #render_key;
            #private::invalidate(__redis_memo_cache, __redis_memo_key).await
        }

        #invalidate_many

        #invalidate_all

        #tag_helpers

        #[doc(hidden)]
        #allow
        #vis fn #entry_fn #entry_generics (#entry_params) -> #private::EntryRef<#stored> #entry_where {
            #spec
            #probe
            #key_types
            #private::EntryRef::new(
                &__REDIS_MEMO_SPEC,
                #entry_key,
                #render_tags,
                [__redis_memo_body_type, __redis_memo_key_types],
                <#private::#kind as #private::StoredKind<#stored>>::storable,
            )
        }

        #function_companion
    }
}

/// The `cache` expression's tokens (empty without one), for finding the generics it uses.
fn cache_tokens(options: &CachedArgs) -> TokenStream {
    options
        .cache
        .as_ref()
        .map(|expr| quote!(#expr))
        .unwrap_or_default()
}

/// `invalidate_<fn>_by_<params>`: one helper per set of parameters that tags are rendered from,
/// invalidating every tag rendered from exactly that set.
fn tag_helpers(
    options: &CachedArgs,
    model: &FnModel,
    usage: &Usage,
    function: &ItemFn,
    private: &TokenStream,
    select_cache: &TokenStream,
) -> TokenStream {
    let vis = &function.vis;
    let name = &function.sig.ident;
    let generics = &function.sig.generics;
    let cache_expr = cache_tokens(options);
    let mut groups: Vec<(&crate::check::HelperInputs, Vec<&Template>)> = Vec::new();
    for (inputs, tag) in usage.tags.iter().zip(&options.tags) {
        if inputs.is_empty() {
            continue; // a literal tag: `Cache::invalidate_tag("users")`
        }
        match groups.iter_mut().find(|(group, _)| *group == inputs) {
            Some((_, tags)) => tags.push(tag),
            None => groups.push((inputs, vec![tag])),
        }
    }
    let helpers = groups.into_iter().map(|(inputs, tags)| {
        let mut words: Vec<String> = Vec::new();
        if inputs.takes_self {
            words.push("self".to_owned());
        }
        words.extend(inputs.params.iter().map(|&index| model.params[index].ident.to_string()));
        let helper = format_ident!("invalidate_{}_by_{}", name, words.join("_and_"));
        let params = helper_inputs(model, &inputs.union(&usage.cache));
        let (helper_generics, helper_where) =
            helper_generics(generics, &params, cache_expr.clone());
        let sources: Vec<String> = tags.iter().map(|tag| format!("`{}`", tag.source)).collect();
        let doc = format!(
            " Invalidates every entry under the tag {} of [`{name}`] (of any function with that tag), \
             with one Redis command per tag whatever the number of entries; `Ok(true)` if the tag had entries.",
            sources.join(" and ")
        );
        let render = render_tags(
            tags.into_iter(),
            model,
            quote!(#private::tag_key_writer(__redis_memo_cache)),
            private,
            Params::ByValue,
        );
        let many = many_helper(
            &Many {
                private,
                model,
                function,
                helper: format_ident!("{}_many", helper),
                items: inputs,
                cache: &usage.cache,
                cache_expr: cache_expr.clone(),
                select_cache,
                doc: format!(
                    " [`{helper}`] for many argument sets at once, in one round trip (pipelined); \
                     how many of the tags had entries."
                ),
            },
            quote!(__redis_memo_keys.extend(#render);),
            quote!(#private::invalidate_tags(__redis_memo_cache, __redis_memo_keys).await),
        );
        quote! {
            #[doc = #doc]
            #[doc = ""]
            #[doc = " # Errors"]
            #[doc = " When Redis fails or times out (a lost invalidation must not pass silently), or no cache is installed."]
            #[allow(dead_code, clippy::needless_pass_by_value, clippy::ptr_arg)]
            #vis async fn #helper #helper_generics (#params) -> ::core::result::Result<bool, #private::CacheError> #helper_where {
                #select_cache
                let __redis_memo_tags: ::std::vec::Vec<::std::string::String> = #render;
                ::core::result::Result::Ok(#private::invalidate_tags(__redis_memo_cache, __redis_memo_tags).await? > 0)
            }

            #many
        }
    });
    quote!(#(#helpers)*)
}

/// What [`many_helper`] writes a helper from.
struct Many<'a> {
    private: &'a TokenStream,
    model: &'a FnModel,
    function: &'a ItemFn,
    helper: syn::Ident,
    /// The parameters of one item (with `self`, the helper's receiver instead).
    items: &'a HelperInputs,
    /// What the `cache` expression reads: the helper's other parameters.
    cache: &'a HelperInputs,
    cache_expr: TokenStream,
    select_cache: &'a TokenStream,
    doc: String,
}

/// `async fn <helper>(items: impl IntoIterator<Item = (A, B)>, <cache params>)`: binds each
/// item's parameters, runs `per_item` (which pushes onto `__redis_memo_keys`), then returns
/// `finish` (a `Result<u64, CacheError>`). Nothing when an item would be empty or the `cache`
/// expression reads an item's parameter (it must be known before the items are).
fn many_helper(many: &Many<'_>, per_item: TokenStream, finish: TokenStream) -> TokenStream {
    let Many {
        private,
        model,
        function,
        helper,
        items,
        cache,
        cache_expr,
        select_cache,
        doc,
    } = many;
    if items.params.is_empty()
        || items
            .params
            .iter()
            .any(|index| cache.params.contains(index))
    {
        return TokenStream::new();
    }
    // `impl IntoIterator<Item = &Q>` with `Q` a type parameter would need an outlives bound
    // on a lifetime the function does not have: such functions get no batch helper.
    let type_params: Vec<String> = function
        .sig
        .generics
        .type_params()
        .map(|param| param.ident.to_string())
        .collect();
    if items
        .params
        .iter()
        .any(|&index| borrows_a_type_parameter(&model.params[index].ty, &type_params))
    {
        return TokenStream::new();
    }
    let vis = &function.vis;
    let idents: Vec<&syn::Ident> = items
        .params
        .iter()
        .map(|&index| &model.params[index].ident)
        .collect();
    let types: Vec<&Type> = items
        .params
        .iter()
        .map(|&index| &model.params[index].ty)
        .collect();
    let (item_type, item_pattern) = if let ([ty], [ident]) = (&types[..], &idents[..]) {
        (quote!(#ty), quote!(#ident))
    } else {
        (quote!((#(#types,)*)), quote!((#(#idents,)*)))
    };
    let receiver = (items.takes_self || cache.takes_self).then(|| quote!(&self,));
    let rest = helper_inputs(
        model,
        &HelperInputs {
            params: cache.params.clone(),
            takes_self: false,
        },
    );
    let signature = quote! {
        #receiver __redis_memo_items: impl ::core::iter::IntoIterator<Item = #item_type>, #rest
    };
    let (helper_generics, helper_where) = helper_generics(
        &function.sig.generics,
        &quote!(#item_type #rest),
        cache_expr.clone(),
    );
    quote! {
        #[doc = #doc]
        #[doc = ""]
        #[doc = " # Errors"]
        #[doc = " When Redis fails or times out (a lost invalidation must not pass silently), or no cache is installed."]
        #[allow(dead_code, clippy::needless_pass_by_value, clippy::ptr_arg)]
        #vis async fn #helper #helper_generics (#signature) -> ::core::result::Result<u64, #private::CacheError> #helper_where {
            #select_cache
            let mut __redis_memo_keys: ::std::vec::Vec<::std::string::String> = ::std::vec::Vec::new();
            for #item_pattern in __redis_memo_items {
                #per_item
            }
            #finish
        }
    }
}

/// Whether `ty` has a reference to a type that mentions one of `type_params`.
fn borrows_a_type_parameter(ty: &Type, type_params: &[String]) -> bool {
    use syn::visit::Visit;
    struct Finder<'a> {
        type_params: &'a [String],
        under_reference: bool,
        found: bool,
    }
    impl<'ast> Visit<'ast> for Finder<'_> {
        fn visit_type_reference(&mut self, reference: &'ast syn::TypeReference) {
            let outer = std::mem::replace(&mut self.under_reference, true);
            syn::visit::visit_type_reference(self, reference);
            self.under_reference = outer;
        }
        fn visit_ident(&mut self, ident: &'ast syn::Ident) {
            if self.under_reference && self.type_params.iter().any(|param| ident == param) {
                self.found = true;
            }
        }
    }
    let mut finder = Finder {
        type_params,
        under_reference: false,
        found: false,
    };
    finder.visit_type(ty);
    finder.found
}

/// `&self, a: A, b: B` for a helper's signature.
pub(crate) fn helper_inputs(model: &FnModel, inputs: &HelperInputs) -> TokenStream {
    helper_parameters(model, inputs, TokenStream::new())
}

/// [`helper_inputs`] with each parameter taken by reference, `id: &u64`.
fn helper_inputs_by_reference(model: &FnModel, inputs: &HelperInputs) -> TokenStream {
    helper_parameters(model, inputs, quote!(&))
}

fn helper_parameters(model: &FnModel, inputs: &HelperInputs, borrow: TokenStream) -> TokenStream {
    let receiver = inputs.takes_self.then(|| quote!(&self,));
    let params = inputs.params.iter().map(|&index| {
        let param = &model.params[index];
        let (ident, ty) = (&param.ident, &param.ty);
        quote!(#ident: #borrow #ty)
    });
    quote!(#receiver #(#params),*)
}

/// `tokens` with every span set to `span`.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
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
pub(crate) fn helper_generics(
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
pub(crate) fn names_in(tokens: TokenStream) -> std::collections::HashSet<String> {
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
