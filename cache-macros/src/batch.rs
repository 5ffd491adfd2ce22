//! `#[redis_cached_batch(get_user(*id) for id in ids)]`: a batch loader that shares its
//! entries with a memoized function (the reader). The attribute names the reader call for one
//! element of a slice parameter; the loader's body is called with the elements whose entries
//! missed, under that parameter's name.
//!
//! The reader call becomes a call of the reader's `<reader>_cache_entry` helper (as in the
//! writers), so a wrong name, number or type of arguments is reported by the compiler on the
//! user's tokens, and the value type of the loader's map is checked against the reader's.

use crate::errors::Errors;
use crate::expand::{parse_item, select_cache};
use crate::writer::{entry_call, refuse_turbofish};
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Expr, ExprCall, FnArg, Ident, ItemFn, Pat, Path, Token, Type};

/// The attribute as written.
struct BatchArgs {
    reader: ExprCall,
    /// The pattern each element is bound to (`id` in `for id in ids`).
    element: Pat,
    /// The slice parameter (`ids`).
    slice: Ident,
    cache: Option<Expr>,
    krate: Option<(Path, Span)>,
}

impl Parse for BatchArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let reader = match input.parse::<Expr>() {
            Ok(Expr::Call(call)) if matches!(*call.func, Expr::Path(_)) => call,
            Ok(other) => {
                return Err(syn::Error::new_spanned(
                    other,
                    "expected the reader's call for one element, like `get_user(*id) for id in ids`",
                ));
            }
            Err(error) => {
                return Err(syn::Error::new(
                    error.span(),
                    "expected the reader's call for one element, like `get_user(*id) for id in ids`",
                ));
            }
        };
        let for_token = input.parse::<Token![for]>().map_err(|_| {
            syn::Error::new_spanned(
                &reader,
                "expected `for <element> in <slice parameter>` after the reader call, like \
                 `get_user(*id) for id in ids`",
            )
        })?;
        let element = Pat::parse_single(input)?;
        input
            .parse::<Token![in]>()
            .map_err(|error| syn::Error::new(error.span(), "expected `in <slice parameter>`"))?;
        let slice: Ident = input.parse()?;
        let _ = for_token;
        let mut args = BatchArgs {
            reader,
            element,
            slice,
            cache: None,
            krate: None,
        };
        let mut errors = Errors::default();
        while input.peek(Token![,]) {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            let name = Ident::parse_any(input)?;
            input.parse::<Token![=]>()?;
            let value: Expr = input.parse()?;
            match name.to_string().as_str() {
                "cache" if args.cache.is_none() => args.cache = Some(value),
                "crate" if args.krate.is_none() => match &value {
                    Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(lit),
                        ..
                    }) => match lit.parse::<Path>() {
                        Ok(path) => args.krate = Some((path, lit.span())),
                        Err(_) => {
                            errors.spanned(lit, "`crate` must be a path such as \"my_redis_memo\"")
                        }
                    },
                    other => errors.spanned(other, "write `crate = \"my_redis_memo\"`"),
                },
                "cache" | "crate" => {
                    errors.spanned(&name, format!("`{name}` is given twice; keep one"))
                }
                _ => errors.spanned(
                    &name,
                    format!("unknown option `{name}`; the options are `cache` and `crate`"),
                ),
            }
        }
        if !input.is_empty() {
            return Err(input.error("expected `, cache = ..` or `, crate = \"..\"`"));
        }
        match errors.into_error() {
            Some(error) => Err(error),
            None => Ok(args),
        }
    }
}

/// The element type of a `&[T]` parameter.
fn slice_element(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Reference(reference) if reference.mutability.is_none() => match &*reference.elem {
            Type::Slice(slice) => Some(&slice.elem),
            _ => None,
        },
        Type::Paren(paren) => slice_element(&paren.elem),
        _ => None,
    }
}

pub(crate) fn redis_cached_batch(args: TokenStream, item: TokenStream) -> TokenStream {
    let (function, _) = match parse_item("#[redis_cached_batch]", &args, item) {
        Ok(parsed) => parsed,
        Err(tokens) => return tokens,
    };
    let args = match syn::parse2::<BatchArgs>(args) {
        Ok(args) => args,
        Err(error) => {
            let error = error.into_compile_error();
            return quote!(#error #function);
        }
    };
    let mut errors = Errors::default();
    if function.sig.asyncness.is_none() {
        errors.spanned(
            function.sig.fn_token,
            "`#[redis_cached_batch]` goes on an `async fn`: it awaits the cache",
        );
    }
    if let Expr::Path(func) = &*args.reader.func {
        refuse_turbofish(&func.path, &mut errors);
    }
    check_element_used(&args, &mut errors);
    let element_type = match slice_parameter(&function, &args.slice) {
        Ok(ty) => Some(ty),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    match (errors.into_error(), element_type) {
        (None, Some(element_type)) => expand(&args, &function, &element_type),
        (error, _) => {
            let error = error.map(syn::Error::into_compile_error);
            quote!(#error #function)
        }
    }
}

/// The reader call must read the element: otherwise every element would name one entry and
/// get its value.
fn check_element_used(args: &BatchArgs, errors: &mut Errors) {
    let mut names = Vec::new();
    collect_bindings(&args.element, &mut names);
    let used = args
        .reader
        .args
        .iter()
        .any(|arg| mentions(quote!(#arg), &names));
    if !used {
        errors.spanned(
            &args.reader,
            "the reader call does not use the element: every element would read the same \
             entry; pass it, like `get_user(*id) for id in ids`",
        );
    }
}

fn collect_bindings(pattern: &Pat, names: &mut Vec<Ident>) {
    match pattern {
        Pat::Ident(ident) => names.push(ident.ident.clone()),
        Pat::Tuple(tuple) => tuple
            .elems
            .iter()
            .for_each(|elem| collect_bindings(elem, names)),
        Pat::Reference(reference) => collect_bindings(&reference.pat, names),
        Pat::Paren(paren) => collect_bindings(&paren.pat, names),
        Pat::TupleStruct(tuple) => tuple
            .elems
            .iter()
            .for_each(|elem| collect_bindings(elem, names)),
        Pat::Struct(structure) => structure
            .fields
            .iter()
            .for_each(|field| collect_bindings(&field.pat, names)),
        _ => {}
    }
}

fn mentions(tokens: TokenStream, names: &[Ident]) -> bool {
    tokens.into_iter().any(|token| match token {
        proc_macro2::TokenTree::Ident(ident) => names.contains(&ident),
        proc_macro2::TokenTree::Group(group) => mentions(group.stream(), names),
        _ => false,
    })
}

/// The element type of the parameter the attribute names, which must be `&[T]`.
fn slice_parameter(function: &ItemFn, slice: &Ident) -> Result<Type, syn::Error> {
    let typed = function.sig.inputs.iter().find_map(|input| match input {
        FnArg::Typed(typed) => match &*typed.pat {
            Pat::Ident(ident) if ident.ident == *slice => Some(typed),
            _ => None,
        },
        FnArg::Receiver(_) => None,
    });
    let Some(typed) = typed else {
        return Err(syn::Error::new(
            slice.span(),
            format!(
                "`{slice}` is not a parameter of this function: name the slice of elements to \
                 load, like `for id in ids` with a parameter `ids: &[u64]`"
            ),
        ));
    };
    slice_element(&typed.ty).cloned().ok_or_else(|| {
        syn::Error::new_spanned(
            &typed.ty,
            format!(
                "`{slice}` must be a shared slice reference such as `&[u64]`: the batch is \
                 called with the elements that missed"
            ),
        )
    })
}

fn expand(args: &BatchArgs, function: &ItemFn, element_type: &Type) -> TokenStream {
    let krate = args
        .krate
        .as_ref()
        .map_or_else(|| quote!(::redis_memo), |(path, _)| quote!(#path));
    let private = quote!(#krate::__private);
    let select_cache = select_cache(args.cache.as_ref(), &private, false);
    let slice = &args.slice;
    let element = &args.element;
    let entry = entry_call(&args.reader);
    let body = &function.block.stmts;
    // The declared return type on the loader too: its body is checked against it as written,
    // and the call below against the reader's value type, on the user's return type.
    let (output, output_span) = match &function.sig.output {
        syn::ReturnType::Type(_, ty) => (quote!(-> #ty), ty.span()),
        syn::ReturnType::Default => (TokenStream::new(), function.sig.ident.span()),
    };
    let load = quote_spanned! {function.block.span()=>
        async |#slice: &[#element_type]| #output { #(#body)* }
    };
    let memoize_batch = quote_spanned! {output_span=>
        #private::Cache::memoize_batch(
            __redis_memo_cache,
            __redis_memo_items,
            __redis_memo_load,
        )
    };
    // The entries are named before the loader exists: it may move what their arguments read.
    let wrapped = quote! {{
        #select_cache
        let __redis_memo_items: ::core::option::Option<::std::vec::Vec<_>> =
            ::core::option::Option::map(__redis_memo_cache, |_| {
                ::core::iter::Iterator::collect(::core::iter::Iterator::map(
                    ::core::iter::IntoIterator::into_iter(#slice),
                    |__redis_memo_element: &#element_type| {
                        let #element = __redis_memo_element;
                        (::core::clone::Clone::clone(__redis_memo_element), #entry)
                    },
                ))
            });
        let mut __redis_memo_load = #load;
        match (__redis_memo_cache, __redis_memo_items) {
            (
                ::core::option::Option::Some(__redis_memo_cache),
                ::core::option::Option::Some(__redis_memo_items),
            ) => #memoize_batch.await,
            _ => __redis_memo_load(#slice).await,
        }
    }};
    let mut function = function.clone();
    *function.block = syn::Block {
        brace_token: function.block.brace_token,
        stmts: vec![syn::Stmt::Expr(syn::Expr::Verbatim(wrapped), None)],
    };
    quote!(#function)
}
