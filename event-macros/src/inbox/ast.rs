//! The model of an `#[inbox]` function, keeping the syn nodes for spans.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{FnArg, Ident, Item, ItemFn, PatType, Receiver, ReturnType, Type};

use super::attr::Options;

pub(crate) struct Inbox<'a> {
    pub(crate) item: &'a ItemFn,
    pub(crate) ident: &'a Ident,
    pub(crate) options: Options,
    /// `self`, `&self`, …, if written.
    pub(crate) receiver: Option<&'a Receiver>,
    /// The typed parameters, in order.
    pub(crate) params: Vec<&'a PatType>,
    /// The type after `->`, if any.
    pub(crate) output: Option<&'a Type>,
}

impl<'a> Inbox<'a> {
    pub(crate) fn from_syn(item: &'a ItemFn, options: Options) -> Self {
        let sig = &item.sig;
        let mut receiver = None;
        let mut params = Vec::new();
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(r) => receiver = receiver.or(Some(r)),
                FnArg::Typed(p) => params.push(p),
            }
        }
        let output = match &sig.output {
            ReturnType::Default => None,
            ReturnType::Type(_, ty) => Some(&**ty),
        };
        Inbox { item, ident: &sig.ident, options, receiver, params, output }
    }

    /// The fn name as it is registered (`r#type` is `type`).
    pub(crate) fn name(&self) -> String {
        syn::ext::IdentExt::unraw(self.ident).to_string()
    }
}

/// The first tokens of an item that is not a fn (`struct Foo`), to point at.
pub(crate) fn item_head(item: &Item) -> TokenStream {
    match item {
        Item::Struct(i) => head(&i.struct_token, &i.ident),
        Item::Enum(i) => head(&i.enum_token, &i.ident),
        Item::Union(i) => head(&i.union_token, &i.ident),
        Item::Const(i) => head(&i.const_token, &i.ident),
        Item::Static(i) => head(&i.static_token, &i.ident),
        Item::Type(i) => head(&i.type_token, &i.ident),
        Item::Trait(i) => head(&i.trait_token, &i.ident),
        Item::Mod(i) => head(&i.mod_token, &i.ident),
        Item::Impl(i) => {
            let (impl_token, self_ty) = (&i.impl_token, &i.self_ty);
            quote!(#impl_token #self_ty)
        }
        other => quote!(#other),
    }
}

fn head(keyword: &impl quote::ToTokens, ident: &Ident) -> TokenStream {
    quote!(#keyword #ident)
}
