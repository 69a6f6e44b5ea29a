//! Tandem's derives, so that each exposed field is declared once.
//!
//! - `#[derive(NativeRow)]` on a row struct: the native SQLite reader's column list and
//!   decoder, from the struct's fields (the sea-orm entity or partial model is the one
//!   declaration of a row).
//! - `#[plain_object]` on an `#[Object] impl`: the type's `PlainFields` implementation, from
//!   the resolvers themselves. A resolver that takes only `&self` and does not await is plain:
//!   the fast path calls a synchronous copy of its body and converts the value as async-graphql
//!   would; a resolver returning an error falls back to the generic path (which reports it). A
//!   resolver that takes the context (auth, loaders) or arguments is never plain. A type whose
//!   prefetched object fields may be answered without waiting names them with
//!   `#[plain_object(prefetched)]` and implements `Prefetched` by hand; the equality test
//!   (`tests/it/plain.rs`) compares both paths on every field.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenTree};
use quote::{ToTokens, format_ident, quote};
use syn::{
    Data, DeriveInput, Fields, FnArg, ImplItem, ItemImpl, LitStr, ReturnType, Type,
    parse_macro_input,
};

/// Implements `crate::db::NativeRow` for a struct whose fields are named as its columns.
#[proc_macro_derive(NativeRow)]
pub fn derive_native_row(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    let name = &input.ident;
    let Data::Struct(data) = &input.data else {
        return syn::Error::new_spanned(name, "NativeRow needs a struct")
            .to_compile_error()
            .into();
    };
    let Fields::Named(fields) = &data.fields else {
        return syn::Error::new_spanned(name, "NativeRow needs named fields")
            .to_compile_error()
            .into();
    };
    let idents: Vec<_> = fields
        .named
        .iter()
        .map(|f| f.ident.clone().unwrap())
        .collect();
    let names: Vec<String> = idents.iter().map(|i| i.to_string()).collect();
    quote! {
        impl crate::db::NativeRow for #name {
            const COLUMNS: &'static [&'static str] = &[#(#names),*];

            fn from_native(row: &rusqlite::Row<'_>, at: &[usize]) -> rusqlite::Result<Self> {
                use crate::db::FromColumn;
                let mut at = at.iter().copied();
                let mut next = || at.next().expect("one position per column");
                Ok(Self { #(#idents: FromColumn::column(row, next(), #names)?),* })
            }
        }
    }
    .into()
}

/// async-graphql's default field name: the method name in camelCase.
fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.trim_start_matches("r#").chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The `name = "…"` and `skip` of a `#[graphql(…)]` attribute.
fn graphql_attr(attrs: &[syn::Attribute]) -> syn::Result<(Option<String>, bool)> {
    let mut name = None;
    let mut skip = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("graphql")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                name = Some(meta.value()?.parse::<LitStr>()?.value());
            } else if meta.path.is_ident("skip") {
                skip = true;
            } else if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            } else if meta.input.peek(syn::token::Paren) {
                let _content;
                syn::parenthesized!(_content in meta.input);
                let _: proc_macro2::TokenStream = _content.parse()?;
            }
            Ok(())
        })?;
    }
    Ok((name, skip))
}

/// Whether a token stream awaits anywhere.
fn awaits(tokens: proc_macro2::TokenStream) -> bool {
    tokens.into_iter().any(|t| match t {
        TokenTree::Ident(i) => i == "await",
        TokenTree::Group(g) => awaits(g.stream()),
        _ => false,
    })
}

/// The type inside `Result<…>`, when the return type is one.
fn result_inner(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        syn::GenericArgument::Type(t) => Some(t),
        _ => None,
    }
}

/// How a value of `ty` becomes a GraphQL value (`v` is a reference to it).
fn to_value(ty: &Type) -> proc_macro2::TokenStream {
    let text = quote!(#ty).to_string().replace(' ', "");
    match text.as_str() {
        "&str" => quote!(async_graphql::Value::String(v.to_string())),
        "Option<&str>" => quote!(v.map_or(async_graphql::Value::Null, |s| {
            async_graphql::Value::String(s.to_string())
        })),
        // Scalars and enums (InputType); an object value is not plain (autoref dispatch).
        _ => quote!({
            use crate::graphql::inline::{NotPlain as _, ViaInput as _};
            (&crate::graphql::inline::PlainProbe(v)).plain_value()?
        }),
    }
}

/// Generates `PlainFields` for an `#[Object] impl` from its plain resolvers.
#[proc_macro_attribute]
pub fn plain_object(args: TokenStream, input: TokenStream) -> TokenStream {
    let prefetched = !args.is_empty();
    let item = parse_macro_input!(input as ItemImpl);
    let self_ty = &item.self_ty;
    let mut arms = Vec::new();
    let mut copies = Vec::new();
    for member in &item.items {
        let ImplItem::Fn(method) = member else {
            continue;
        };
        let (renamed, skip) = match graphql_attr(&method.attrs) {
            Ok(found) => found,
            Err(err) => return err.to_compile_error().into(),
        };
        let sig = &method.sig;
        let only_self = sig.inputs.len() == 1 && matches!(sig.inputs[0], FnArg::Receiver(_));
        if skip || !only_self || awaits(method.block.to_token_stream()) {
            continue;
        }
        let ReturnType::Type(_, ty) = &sig.output else {
            continue;
        };
        // `Json`'s input form (a string) is not what its resolver answers: never plain.
        if quote!(#ty).to_string().contains("Json") {
            continue;
        }
        let field = renamed.unwrap_or_else(|| camel(&sig.ident.to_string()));
        let copy = format_ident!("__plain_{}", sig.ident, span = Span::call_site());
        let block = &method.block;
        let output = &sig.output;
        copies.push(quote! {
            #[doc(hidden)]
            #[allow(dead_code)]
            fn #copy(&self) #output #block
        });
        let arm = match result_inner(ty) {
            Some(inner) => {
                let convert = to_value(inner);
                quote! { #field => match self.#copy() { Ok(v) => { let v = &v; #convert } Err(_) => return None } }
            }
            None => {
                let convert = to_value(ty);
                quote! { #field => { let v = &self.#copy(); #convert } }
            }
        };
        arms.push(arm);
    }
    let fallback_scalar = if prefetched {
        quote!(crate::graphql::inline::Prefetched::prefetched_scalar(
            self, name
        ))
    } else {
        quote!(None)
    };
    let fallback_object = if prefetched {
        quote!(crate::graphql::inline::Prefetched::prefetched_object(
            self, name
        ))
    } else {
        quote!(None)
    };
    quote! {
        #item

        impl #self_ty {
            #(#copies)*
        }

        impl crate::graphql::inline::PlainFields for #self_ty {
            fn plain_scalar(&self, name: &str) -> Option<async_graphql::Value> {
                Some(match name {
                    #(#arms,)*
                    _ => return #fallback_scalar,
                })
            }

            fn plain_object(
                &self,
                name: &str,
            ) -> Option<Option<&dyn crate::graphql::inline::PlainObject>> {
                #fallback_object
            }
        }
    }
    .into()
}
