//! `#[redis_cache_put(reader(args), ..)]` and `#[redis_cache_evict(reader(args), ..)]`: writers
//! that name the memoized function (the reader) whose entry they write or remove, with the
//! arguments of the reader's key and tags, instead of spelling its key a second time.
//!
//! A reader call `get_user(user.id, user.org_id)` becomes a call of the reader's generated
//! `get_user_cache_entry(..)`, with the user's own tokens: a wrong name, number or type of
//! arguments is reported by the compiler on them, and the stored value's type is checked
//! against the reader's.
//!
//! The reader arguments (and `tags`) are evaluated before the body, which may move the
//! parameters they read (the entry helper borrows its arguments, so the body keeps them);
//! `value = <expr>` after it, when it succeeded.

use crate::args::tag_templates;
use crate::errors::Errors;
use crate::expand::{Params, parse_item, render_tags, respan, select_cache};
use crate::signature::{self, FnModel, Param};
use crate::template::Template;
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprCall, FnArg, Ident, ItemFn, Pat, Path, ReturnType, Token};

/// Which attribute.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Put,
    Evict,
}

impl Mode {
    fn attribute(self) -> &'static str {
        match self {
            Mode::Put => "#[redis_cache_put]",
            Mode::Evict => "#[redis_cache_evict]",
        }
    }

    fn valid(self) -> &'static str {
        match self {
            Mode::Put => {
                "a reader call like `get_user(user.id)`, `value`, `result`, `cache`, `crate`"
            }
            Mode::Evict => {
                "reader calls like `get_user(id)`, `tags`, `all_of`, `before`, `result`, `cache`, `crate`"
            }
        }
    }
}

/// One item of the attribute: a reader call, or an option.
enum Item {
    Reader(ExprCall),
    Option { name: Ident, value: Option<Expr> },
}

impl Parse for Item {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let ahead = input.fork();
        if let Ok(name) = Ident::parse_any(&ahead)
            && (ahead.is_empty() || ahead.peek(Token![,]) || ahead.peek(Token![=]))
        {
            Ident::parse_any(input)?;
            let value = if input.peek(Token![=]) {
                input.parse::<Token![=]>()?;
                Some(input.parse::<Expr>()?)
            } else {
                None
            };
            return Ok(Item::Option { name, value });
        }
        match input.parse::<Expr>()? {
            Expr::Call(call) if matches!(*call.func, Expr::Path(_)) => Ok(Item::Reader(call)),
            other => Err(syn::Error::new_spanned(
                other,
                "expected a call of the memoized function whose entry this writes, like `get_user(user.id)`",
            )),
        }
    }
}

struct Items(Vec<Item>);

impl Parse for Items {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let items = Punctuated::<Item, Token![,]>::parse_terminated(input)?;
        Ok(Items(items.into_iter().collect()))
    }
}

/// The attribute's options, checked for form.
struct WriterArgs {
    readers: Vec<ExprCall>,
    value: Option<Expr>,
    /// `result = name`: the body's result (its `Ok` value for a `Result`) under `name`, for
    /// reader arguments, `tags` and `value`, which are then evaluated after the body.
    result: Option<Ident>,
    tags: Vec<Template>,
    all_of: Vec<Path>,
    before: Option<Span>,
    cache: Option<Expr>,
    krate: Path,
}

fn check_args(mode: Mode, items: Items, attr_span: Span, errors: &mut Errors) -> WriterArgs {
    let mut args = WriterArgs {
        readers: Vec::new(),
        value: None,
        result: None,
        tags: Vec::new(),
        all_of: Vec::new(),
        before: None,
        cache: None,
        krate: syn::parse_quote!(::redis_memo),
    };
    let mut seen: Vec<String> = Vec::new();
    for item in items.0 {
        let (name, value) = match item {
            Item::Reader(call) => {
                if let Expr::Path(func) = &*call.func {
                    refuse_turbofish(&func.path, errors);
                }
                if mode == Mode::Put && !args.readers.is_empty() {
                    errors.spanned(
                        &call,
                        "`#[redis_cache_put]` writes one entry: name one reader call",
                    );
                } else {
                    args.readers.push(call);
                }
                continue;
            }
            Item::Option { name, value } => (name, value),
        };
        let text = name.to_string();
        if seen.contains(&text) {
            errors.spanned(&name, format!("`{text}` is given twice; keep one"));
            continue;
        }
        seen.push(text.clone());
        match (mode, text.as_str()) {
            (Mode::Put, "value") => match value {
                Some(expr) => args.value = Some(expr),
                None => {
                    errors.spanned(&name, "`value` needs an expression: `value = user.clone()`")
                }
            },
            (_, "result") => match value {
                Some(Expr::Path(path)) if path.path.get_ident().is_some() => {
                    args.result = path.path.get_ident().cloned();
                }
                _ => errors.spanned(
                    &name,
                    "`result` names the body's result for the reader arguments and tags: `result = user`",
                ),
            },
            (Mode::Evict, "tags") => args.tags = tag_templates(&name, value.as_ref(), errors),
            (Mode::Evict, "all_of") => {
                args.all_of = reader_paths(&name, value, errors);
                for path in &args.all_of {
                    refuse_turbofish(path, errors);
                }
            }
            (Mode::Evict, "before") => match value {
                None => args.before = Some(name.span()),
                Some(value) => errors.spanned(value, "`before` takes no value: write `before`"),
            },
            (_, "cache") => match value {
                Some(expr) => args.cache = Some(expr),
                None => errors.spanned(
                    &name,
                    "`cache` needs a value: `cache = <expression giving a &Cache>`",
                ),
            },
            (_, "crate") => match value {
                Some(Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(lit),
                    ..
                })) => match lit.parse::<Path>() {
                    Ok(path) => args.krate = path,
                    Err(_) => {
                        errors.spanned(&lit, "`crate` must be a path such as \"my_redis_memo\"")
                    }
                },
                _ => errors.spanned(
                    &name,
                    "`crate` must be a string literal, like `crate = \"my_redis_memo\"`",
                ),
            },
            _ => errors.spanned(
                &name,
                format!(
                    "unknown option `{text}` of {}; it takes {}",
                    mode.attribute(),
                    mode.valid()
                ),
            ),
        }
    }
    if let (Some(before), Some(result)) = (args.before, &args.result) {
        errors.at(
            before,
            format!(
                "`before` runs before the body, when `{result}` (the body's result) does not exist yet: \
                 drop `before`, or name what to evict from the parameters"
            ),
        );
    }
    let nothing = match mode {
        Mode::Put => args.readers.is_empty(),
        Mode::Evict => args.readers.is_empty() && args.tags.is_empty() && args.all_of.is_empty(),
    };
    if nothing {
        errors.at(
            attr_span,
            match mode {
                Mode::Put => "name the memoized function whose entry this stores, with its key arguments: `#[redis_cache_put(get_user(user.id))]`",
                Mode::Evict => "name what to invalidate: reader calls like `get_user(id)`, `tags = [..]` or `all_of = get_user`",
            },
        );
    }
    args
}

/// `all_of = get_user` or `all_of = [get_user, get_org]`.
fn reader_paths(name: &Ident, value: Option<Expr>, errors: &mut Errors) -> Vec<Path> {
    let elements: Vec<Expr> = match value {
        Some(Expr::Array(array)) => array.elems.into_iter().collect(),
        Some(other) => vec![other],
        None => Vec::new(),
    };
    if elements.is_empty() {
        errors.spanned(name, "`all_of` names memoized functions: `all_of = get_user` or `all_of = [get_user, get_org]`");
    }
    elements
        .into_iter()
        .filter_map(|element| match element {
            Expr::Path(path) if path.qself.is_none() => Some(path.path),
            other => {
                errors.spanned(
                    other,
                    "name a memoized function, like `get_user` or `Self::get_user`",
                );
                None
            }
        })
        .collect()
}

/// The writer's own signature: its parameters (for `tags`), receiver and return kind.
fn writer_model(mode: Mode, function: &ItemFn, errors: &mut Errors) -> Option<FnModel> {
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            format!(
                "{} goes on an `async fn`: make this function `async`",
                mode.attribute()
            ),
        );
    }
    let mut params = Vec::new();
    let mut receiver = None;
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(recv) => receiver = Some(recv.self_token),
            FnArg::Typed(typed) => {
                if let Pat::Ident(pat) = &*typed.pat {
                    params.push(Param {
                        ident: pat.ident.clone(),
                        ty: (*typed.ty).clone(),
                        skip: None,
                        mutable: pat.mutability.is_some(),
                    });
                }
            }
        }
    }
    let output: syn::Type = match &sig.output {
        ReturnType::Type(_, ty) => (**ty).clone(),
        ReturnType::Default => syn::parse_quote!(()),
    };
    let (kind, stored) = signature::classify(&output);
    Some(FnModel {
        params,
        receiver,
        receiver_by_value: false,
        output,
        kind,
        stored,
    })
}

/// The writer's model with `result = name` as one more parameter, of the type a successful
/// call returns (bound by reference after the body).
fn with_result(mut model: FnModel, args: &WriterArgs) -> FnModel {
    if let Some(name) = &args.result {
        let krate = &args.krate;
        let (kind, output) = (model.kind.runtime_name(), &model.output);
        model.params.push(Param {
            ident: name.clone(),
            ty: syn::parse_quote!(&<#krate::__private::#kind as #krate::__private::Written<#output>>::Value),
            skip: None,
            mutable: false,
        });
    }
    model
}

/// Tag placeholders must name the writer's parameters (or its `result`).
fn check_tags(tags: &[Template], model: &FnModel, errors: &mut Errors) {
    for tag in tags {
        for placeholder in tag.placeholders() {
            let known = if placeholder.root == "self" {
                model.receiver.is_some() && !placeholder.fields.is_empty()
            } else {
                model.param(&placeholder.root).is_some()
            };
            if !known {
                let names: Vec<String> = model
                    .params
                    .iter()
                    .map(|p| format!("`{}`", p.ident))
                    .collect();
                errors.spanned(
                    &tag.lit,
                    tag.message_at(
                        placeholder.offset,
                        &format!(
                            "no parameter named `{}` here; the tag is rendered from this function's parameters ({})",
                            placeholder.root,
                            if names.is_empty() { "it has none".to_owned() } else { names.join(", ") }
                        ),
                    ),
                );
            }
        }
    }
}

pub(crate) fn writer(mode: Mode, args: TokenStream, item: TokenStream) -> TokenStream {
    let (mut function, attr_span) = match parse_item(mode.attribute(), &args, item) {
        Ok(parsed) => parsed,
        Err(tokens) => return tokens,
    };
    let mut errors = Errors::default();
    let parsed = match syn::parse2::<Items>(args) {
        Ok(items) => Some(check_args(mode, items, attr_span, &mut errors)),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let model = writer_model(mode, &function, &mut errors);
    let (Some(args), Some(model)) = (parsed, model) else {
        let errors = errors.into_compile_errors();
        return quote!(#errors #function);
    };
    if let Some(result) = &args.result
        && model.param(&result.to_string()).is_some()
    {
        errors.spanned(
            result,
            format!("`{result}` is a parameter of this function; name the result otherwise, like `result = saved`"),
        );
    }
    // The result, if named, is one more name the tags may read.
    let model = with_result(model, &args);
    check_tags(&args.tags, &model, &mut errors);
    if mode == Mode::Put
        && args.value.is_none()
        && matches!(function.sig.output, ReturnType::Default)
    {
        errors.at(
            function.sig.ident.span(),
            "this function returns nothing to store: give the value with `value = <expr>`",
        );
    }
    if !errors.is_empty() {
        let errors = errors.into_compile_errors();
        return quote!(#errors #function);
    }
    let body = expand_body(mode, &args, &model, &function);
    *function.block = syn::Block {
        brace_token: function.block.brace_token,
        stmts: vec![syn::Stmt::Expr(syn::Expr::Verbatim(body), None)],
    };
    quote!(#function)
}

/// `reader(args)` as a call of the reader's `<reader>_cache_entry` (or, with `suffix`
/// `_cache_function`, the bare path), keeping the user's spans.
fn helper_path(path: &Path, suffix: &str) -> Path {
    let mut path = path.clone();
    if let Some(last) = path.segments.last_mut() {
        last.ident = Ident::new(
            &format!("{}{suffix}", last.ident.unraw()),
            last.ident.span(),
        );
    }
    path
}

/// `reader(args)` as a call of `<reader>_cache_entry(&args)`: the helper takes its arguments
/// by reference, so naming the entry before the body moves nothing the body uses, and their
/// types are exactly the reader's.
pub(crate) fn entry_call(call: &ExprCall) -> TokenStream {
    let Expr::Path(func) = &*call.func else {
        return quote!(#call);
    };
    let mut func = func.clone();
    func.path = helper_path(&func.path, "_cache_entry");
    let args = call.args.iter().map(|arg| match arg {
        // A method's receiver, a reference already.
        Expr::Path(path) if path.path.is_ident("self") => quote!(#arg),
        other => quote_spanned!(other.span()=> &(#other)),
    });
    let mut tokens = quote!(#func);
    call.paren_token
        .surround(&mut tokens, |inner| inner.extend(quote!(#(#args),*)));
    tokens
}

/// Generic arguments on a reader's name cannot be passed on: its helpers take only the generic
/// parameters their arguments determine.
pub(crate) fn refuse_turbofish(path: &Path, errors: &mut Errors) {
    if let Some(last) = path.segments.last()
        && !last.arguments.is_none()
    {
        errors.spanned(
            &last.arguments,
            "name the reader without generic arguments: they are inferred from its key \
             arguments, so give those the type you mean (`count(7u64)`)",
        );
    }
}

fn expand_body(mode: Mode, args: &WriterArgs, model: &FnModel, function: &ItemFn) -> TokenStream {
    let krate = &args.krate;
    let private = quote!(#krate::__private);
    let output = &model.output;
    let kind = model.kind.runtime_name();
    // The body's statements, not its block: braces around a one-line body would be
    // reported (`unused_braces`) on the user's tokens.
    let body = &function.block.stmts;
    // Cloned out of its expression: the body may move what the expression reads.
    let select_cache = select_cache(args.cache.as_ref(), &private, true);
    let written =
        quote!(<#private::#kind as #private::Written<#output>>::written(&__redis_memo_result));
    let (prepare, on_success, before) = match mode {
        Mode::Put => {
            let entry = args.readers.first().map(entry_call).unwrap_or_default();
            let (bind, value) = match &args.value {
                // Evaluated only when the writer succeeded; its type checked against the
                // reader's on the user's expression.
                Some(expr) => (quote!(_), quote_spanned!(expr.span()=> &(#expr))),
                None => {
                    let span = match &function.sig.output {
                        ReturnType::Type(_, ty) => ty.span(),
                        ReturnType::Default => function.sig.ident.span(),
                    };
                    (
                        quote!(__redis_memo_value),
                        respan(quote!(__redis_memo_value), span),
                    )
                }
            };
            if let Some(result) = &args.result {
                // The entry is named by the result: its lease is taken after the body, over
                // any computation's (whose fill is then rejected), and the value filled at once.
                let value = match &args.value {
                    Some(expr) => quote_spanned!(expr.span()=> &(#expr)),
                    None => quote!(#result),
                };
                let put = quote! {
                    if let ::core::option::Option::Some(#result) = #written {
                        let _ = #result;
                        let __redis_memo_put = #private::begin_put(__redis_memo_cache, #entry).await;
                        #private::finish_put(
                            __redis_memo_cache,
                            ::core::option::Option::Some(#private::PendingPut::checked(&__redis_memo_put, #value)),
                            __redis_memo_put,
                        ).await;
                    }
                };
                (TokenStream::new(), put, TokenStream::new())
            } else {
                (
                    quote!(let __redis_memo_put = #private::begin_put(__redis_memo_cache, #entry).await;),
                    // One statement per arm: a temporary in `value = ..` lives until it is stored.
                    quote! {
                        match #written {
                            ::core::option::Option::Some(#bind) => {
                                #private::finish_put(
                                    __redis_memo_cache,
                                    ::core::option::Option::Some(#private::PendingPut::checked(&__redis_memo_put, #value)),
                                    __redis_memo_put,
                                ).await;
                            }
                            ::core::option::Option::None => {
                                #private::finish_put(__redis_memo_cache, ::core::option::Option::None, __redis_memo_put).await;
                            }
                        }
                    },
                    TokenStream::new(),
                )
            }
        }
        Mode::Evict => {
            let entries = args.readers.iter().map(|call| {
                let entry = entry_call(call);
                quote!(::std::string::ToString::to_string(#private::EntryRef::rendered_key(&#entry)))
            });
            let tags = render_tags(
                args.tags.iter(),
                model,
                quote!(#private::KeyWriter::new()),
                &private,
                Params::ByValue,
            );
            let all_of = args.all_of.iter().map(|path| {
                let helper = helper_path(path, "_cache_function");
                // Spanned on the user's path: a function without `invalidate_all` is reported
                // there.
                respan(quote!(#private::all_of(#helper())), path.span())
            });
            let evict = quote! {
                #private::evict(
                    __redis_memo_cache,
                    ::core::clone::Clone::clone(&__redis_memo_entries),
                    ::core::clone::Clone::clone(&__redis_memo_tags),
                    ::core::clone::Clone::clone(&__redis_memo_all_of),
                ).await;
            };
            let prepare = quote! {
                let __redis_memo_entries: ::std::vec::Vec<::std::string::String> = ::std::vec![#(#entries),*];
                let __redis_memo_tags: ::std::vec::Vec<::std::string::String> = #tags;
                let __redis_memo_all_of: ::std::vec::Vec<#private::FunctionRef> = ::std::vec![#(#all_of),*];
            };
            if let Some(result) = &args.result {
                // What to evict is named by the result: worked out after the body.
                let evict_after = quote! {
                    if let ::core::option::Option::Some(#result) = #written {
                        let _ = #result;
                        #prepare
                        #evict
                    }
                };
                (TokenStream::new(), evict_after, TokenStream::new())
            } else if args.before.is_some() {
                // Before the body, whatever its outcome; and again once it succeeded, since a
                // reader may have stored the old value again while it ran.
                (prepare, quote!(if #written.is_some() { #evict }), evict)
            } else {
                (
                    prepare,
                    quote!(if #written.is_some() { #evict }),
                    TokenStream::new(),
                )
            }
        }
    };
    quote! {
        #select_cache
        #prepare
        #before
        // Not `move`: parameters the body only borrows stay usable in `value = ..`.
        let __redis_memo_result: #output = async {
            #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::let_unit_value)]
            if false {
                let __redis_memo_fake_return: #output = loop {};
                return __redis_memo_fake_return;
            }
            #(#body)*
        }
        .await;
        #on_success
        __redis_memo_result
    }
}
