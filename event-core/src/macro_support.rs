//! Helpers for the code that `herald`'s derives generate, re-exported through
//! `__private`. Not public API: names and signatures change without notice.
//!
//! Keeping these here, generic and tested once, keeps every expansion small: the
//! derives only forward to them.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode};

use crate::error::Error;
use crate::state_machine::{StateMachine, UnknownState};

/// The `FromStr` error of a state machine for `name`.
pub fn unknown_state<S: StateMachine>(name: &str) -> UnknownState {
    UnknownState::of::<S>(name)
}

/// The `FromStr` error of an action enum for `action`; `names` are its actions.
pub fn unknown_action(subject: &'static str, action: &str, names: &[&'static str]) -> Error {
    let mut allowed = names.to_vec();
    allowed.sort_unstable();
    Error::UnknownAction { subject: subject.to_owned(), action: action.to_owned(), allowed }
}

/// Deserializes a `T` from a string through its `FromStr`.
pub fn deserialize_from_str<'de, T, D>(deserializer: D) -> Result<T, D::Error>
where
    T: FromStr,
    T::Err: fmt::Display,
    D: Deserializer<'de>,
{
    deserializer.deserialize_str(FromStrVisitor(PhantomData))
}

struct FromStrVisitor<T>(PhantomData<T>);

impl<T> Visitor<'_> for FromStrVisitor<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a snake_case name")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        value.parse().map_err(E::custom)
    }
}

/// Encodes a name as TEXT.
pub fn encode_name<'q, DB>(
    name: &'static str,
    buf: &mut <DB as Database>::ArgumentBuffer,
) -> Result<IsNull, BoxDynError>
where
    DB: Database,
    &'static str: Encode<'q, DB>,
{
    <&'static str as Encode<'q, DB>>::encode(name, buf)
}

/// Decodes TEXT into a `T` through its `FromStr`.
pub fn decode_from_str<'r, DB, T>(value: <DB as Database>::ValueRef<'r>) -> Result<T, BoxDynError>
where
    DB: Database,
    &'r str: Decode<'r, DB>,
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text = <&'r str as Decode<'r, DB>>::decode(value)?;
    Ok(text.parse::<T>()?)
}
