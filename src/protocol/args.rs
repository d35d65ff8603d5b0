//! Binding an invocation's encoded argument array straight into a handler's type.
//!
//! The rule, as in the `Args<T>` extractor: a tuple (or tuple struct) binds the arguments
//! positionally, `()` binds none, and any other type binds the single argument. Each argument is
//! decoded once, by its protocol's own deserializer, directly into the target type.

use std::fmt;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{Payload, Protocol, ProtocolError, json, messagepack};

/// Why arguments could not be bound to a handler's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgsError(pub String);

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgsError {}

impl de::Error for ArgsError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

impl From<serde_json::Error> for ArgsError {
    fn from(e: serde_json::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<rmp_serde::decode::Error> for ArgsError {
    fn from(e: rmp_serde::decode::Error) -> Self {
        Self(e.to_string())
    }
}

fn count_error(provided: usize, expected: usize) -> ArgsError {
    ArgsError(format!(
        "Invocation provides {provided} argument(s) but target expects {expected}."
    ))
}

/// One encoded argument, borrowed from the invocation's payload.
#[derive(Debug, Clone, Copy)]
enum Element<'a> {
    Json(&'a RawValue),
    MessagePack(&'a [u8]),
}

impl<'a> Element<'a> {
    fn deserialize_seed<T: DeserializeSeed<'a>>(self, seed: T) -> Result<T::Value, ArgsError> {
        match self {
            Self::Json(raw) => {
                Ok(seed.deserialize(&mut serde_json::Deserializer::from_str(raw.get()))?)
            }
            Self::MessagePack(bytes) => {
                Ok(seed.deserialize(&mut rmp_serde::Deserializer::from_read_ref(bytes))?)
            }
        }
    }
}

/// A [`serde::Deserializer`] over an invocation's argument array.
///
/// `T::deserialize(ArgsDeserializer::new(protocol, &arguments)?)` binds the arguments to any
/// `T: DeserializeOwned`: tuples positionally, `()` to no arguments, anything else to exactly one
/// argument. A count mismatch fails with .NET's text, `Invocation provides <k> argument(s) but
/// target expects <n>.`
#[derive(Debug, Clone)]
pub struct ArgsDeserializer<'a> {
    protocol: Protocol,
    elements: Vec<Element<'a>>,
}

impl<'a> ArgsDeserializer<'a> {
    /// Splits `arguments` (one encoded array) into its elements, without decoding them.
    ///
    /// Fails if the payload is not a well-formed array or nests deeper than
    /// [`MAX_DEPTH`](super::MAX_DEPTH).
    pub fn new(protocol: Protocol, arguments: &'a Payload) -> Result<Self, ProtocolError> {
        let elements = match protocol {
            Protocol::Json => json_elements(arguments)?
                .into_iter()
                .map(Element::Json)
                .collect(),
            Protocol::MessagePack => messagepack::array_elements(&arguments.0)?
                .into_iter()
                .map(|range| Element::MessagePack(&arguments.0[range]))
                .collect(),
        };
        Ok(Self { protocol, elements })
    }

    /// How many arguments the invocation carries.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    /// Whether the invocation carries no arguments.
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    fn expect(&self, count: usize) -> Result<(), ArgsError> {
        if self.elements.len() == count {
            Ok(())
        } else {
            Err(count_error(self.elements.len(), count))
        }
    }

    fn single(&self) -> Result<Element<'a>, ArgsError> {
        self.expect(1)?;
        Ok(self.elements[0])
    }

    fn positional<V: Visitor<'a>>(self, len: usize, visitor: V) -> Result<V::Value, ArgsError> {
        self.expect(len)?;
        let mut seq = Seq {
            elements: self.elements.into_iter().enumerate(),
        };
        let value = visitor.visit_seq(&mut seq)?;
        let unread = seq.elements.len();
        if unread != 0 {
            return Err(count_error(len, len - unread));
        }
        Ok(value)
    }
}

fn json_elements(arguments: &Payload) -> Result<Vec<&RawValue>, ProtocolError> {
    let text = std::str::from_utf8(&arguments.0)
        .map_err(|_| ProtocolError::invalid("Arguments are not valid UTF-8."))?;
    if !text.trim_start().starts_with('[') {
        return Err(ProtocolError::invalid("Arguments must be an array."));
    }
    json::check_depth(text.as_bytes(), 0)?;
    serde_json::from_str(text)
        .map_err(|e| ProtocolError::Invalid(format!("Invalid arguments: {e}")))
}

/// Splits an encoded argument array into one owned (zero-copy) payload per argument.
pub fn split(protocol: Protocol, arguments: &Payload) -> Result<Vec<Payload>, ProtocolError> {
    Ok(match protocol {
        Protocol::Json => json_elements(arguments)?
            .into_iter()
            .map(|raw| Payload(arguments.0.slice_ref(raw.get().as_bytes())))
            .collect(),
        Protocol::MessagePack => messagepack::array_elements(&arguments.0)?
            .into_iter()
            .map(|range| Payload(arguments.0.slice(range)))
            .collect(),
    })
}

struct Seq<'a> {
    elements: std::iter::Enumerate<std::vec::IntoIter<Element<'a>>>,
}

impl<'de> SeqAccess<'de> for Seq<'de> {
    type Error = ArgsError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ArgsError> {
        match self.elements.next() {
            None => Ok(None),
            Some((index, element)) => element
                .deserialize_seed(seed)
                .map(Some)
                .map_err(|e| ArgsError(format!("Error binding argument {index}: {e}"))),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.elements.len())
    }
}

/// Forwards `deserialize_*` calls to the single argument's own deserializer.
macro_rules! forward_to_single {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, ArgsError> {
            match self.single()? {
                Element::Json(raw) => {
                    let mut de = serde_json::Deserializer::from_str(raw.get());
                    Ok((&mut de).$method($($arg,)* visitor)?)
                }
                Element::MessagePack(bytes) => {
                    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
                    Ok((&mut de).$method($($arg,)* visitor)?)
                }
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for ArgsDeserializer<'de> {
    type Error = ArgsError;

    forward_to_single! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_seq();
        deserialize_map();
        deserialize_identifier();
        deserialize_newtype_struct(name: &'static str);
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgsError> {
        self.expect(0)?;
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ArgsError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, ArgsError> {
        self.positional(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, ArgsError> {
        self.positional(len, visitor)
    }

    /// A handler that ignores its arguments accepts any number of them.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgsError> {
        visitor.visit_unit()
    }

    /// Follows the protocol, so types with two representations (bytes as base64 text in JSON, as
    /// `bin` in MessagePack; dates, UUIDs) pick the one the peer used.
    fn is_human_readable(&self) -> bool {
        self.protocol == Protocol::Json
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde::Deserialize;
    use serde::de::{DeserializeOwned, IgnoredAny};
    use serde_bytes::ByteBuf;

    const BOTH: [Protocol; 2] = [Protocol::Json, Protocol::MessagePack];

    fn bind<T: DeserializeOwned>(protocol: Protocol, args: &Payload) -> Result<T, String> {
        let de = ArgsDeserializer::new(protocol, args).map_err(|e| e.to_string())?;
        T::deserialize(de).map_err(|e| e.0)
    }

    fn args<T: serde::Serialize>(protocol: Protocol, value: &T) -> Payload {
        protocol.encode_value(value).unwrap()
    }

    /// What clients send for no arguments (serde writes `()` as null, not as an empty array).
    fn empty(protocol: Protocol) -> Payload {
        match protocol {
            Protocol::Json => Payload(Bytes::from_static(b"[]")),
            Protocol::MessagePack => Payload(Bytes::from_static(&[0x90])),
        }
    }

    #[derive(Debug, PartialEq, Deserialize, serde::Serialize)]
    #[allow(non_snake_case)]
    struct Custom {
        Name: String,
        Value: i32,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Pair(String, i64);

    #[derive(Debug, PartialEq, Deserialize)]
    struct Nothing;

    #[derive(Debug, PartialEq, Deserialize)]
    struct Wrapped(String);

    #[test]
    fn bindings() {
        for p in BOTH {
            let two = args(p, &("bob", 42));
            assert_eq!(bind::<(String, i64)>(p, &two), Ok(("bob".into(), 42)));
            assert_eq!(bind::<Pair>(p, &two), Ok(Pair("bob".into(), 42)));
            assert_eq!(
                bind::<(serde_json::Value, rmpv::Value)>(p, &two).unwrap().0,
                serde_json::json!("bob")
            );

            let one = args(p, &("hi",));
            assert_eq!(bind::<String>(p, &one), Ok("hi".into()));
            assert_eq!(bind::<(String,)>(p, &one), Ok(("hi".into(),)));
            assert_eq!(bind::<Wrapped>(p, &one), Ok(Wrapped("hi".into())));
            assert_eq!(bind::<Option<String>>(p, &one), Ok(Some("hi".into())));
            assert_eq!(
                bind::<serde_json::Value>(p, &one),
                Ok(serde_json::json!("hi"))
            );
            assert_eq!(
                bind::<Option<String>>(p, &args(p, &(None::<String>,))),
                Ok(None)
            );

            let list = args(p, &(vec![1, 2, 3],));
            assert_eq!(bind::<Vec<i32>>(p, &list), Ok(vec![1, 2, 3]));

            let custom = Custom {
                Name: "n".into(),
                Value: 7,
            };
            let obj = args(p, &(&custom,));
            assert_eq!(bind::<Custom>(p, &obj), Ok(custom));

            let none = empty(p);
            // How a sender encodes "no arguments": an empty array type, not `()` (null / nil).
            assert_eq!(args(p, &[(); 0]), none);
            assert_eq!(bind::<()>(p, &none), Ok(()));
            assert_eq!(bind::<Nothing>(p, &none), Ok(Nothing));
            assert!(bind::<IgnoredAny>(p, &two).is_ok());

            let de = ArgsDeserializer::new(p, &two).unwrap();
            assert_eq!((de.len(), de.is_empty()), (2, false));
            assert_eq!(split(p, &two).unwrap().len(), 2);
        }
    }

    #[test]
    fn wrong_counts() {
        for p in BOTH {
            let empty = empty(p);
            let two = args(p, &("a", "b"));
            let one = args(p, &("a",));
            assert_eq!(
                bind::<(String, String, String)>(p, &two),
                Err("Invocation provides 2 argument(s) but target expects 3.".into())
            );
            assert_eq!(
                bind::<String>(p, &two),
                Err("Invocation provides 2 argument(s) but target expects 1.".into())
            );
            assert_eq!(
                bind::<String>(p, &empty),
                Err("Invocation provides 0 argument(s) but target expects 1.".into())
            );
            assert_eq!(
                bind::<()>(p, &one),
                Err("Invocation provides 1 argument(s) but target expects 0.".into())
            );
            assert_eq!(
                bind::<Pair>(p, &one),
                Err("Invocation provides 1 argument(s) but target expects 2.".into())
            );
        }
    }

    #[test]
    fn wrong_types() {
        for p in BOTH {
            let two = args(p, &("a", "b"));
            let err = bind::<(String, i64)>(p, &two).unwrap_err();
            assert!(err.starts_with("Error binding argument 1:"), "{err}");
            assert!(bind::<i64>(p, &args(p, &("x",))).is_err());
            assert!(bind::<Custom>(p, &args(p, &(5,))).is_err());
            assert!(bind::<Vec<i32>>(p, &args(p, &("x",))).is_err());
        }
        assert!(
            ArgsDeserializer::new(Protocol::Json, &Payload(Bytes::from_static(b"{}"))).is_err()
        );
        assert!(
            ArgsDeserializer::new(Protocol::Json, &Payload(Bytes::from_static(b"[1,"))).is_err()
        );
        assert!(
            ArgsDeserializer::new(Protocol::MessagePack, &Payload(Bytes::from_static(&[0x80])))
                .is_err()
        );
    }

    #[test]
    fn hostile_payloads() {
        // A lying array32 inside a typed argument never reaches rmp-serde's pre-allocation.
        let lying = Payload(Bytes::from_static(&[
            0x91, 0x91, 0xDD, 0xFF, 0xFF, 0xFF, 0xFF,
        ]));
        assert!(ArgsDeserializer::new(Protocol::MessagePack, &lying).is_err());
        let mut deep = vec![0x91; 200];
        deep.push(0);
        assert!(ArgsDeserializer::new(Protocol::MessagePack, &Payload(deep.into())).is_err());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(ArgsDeserializer::new(Protocol::Json, &Payload(deep.into())).is_err());
    }

    #[test]
    fn human_readable_follows_protocol() {
        // Bytes: base64-free `bin` in MessagePack; in JSON the handler's type decides.
        let bin = args(Protocol::MessagePack, &(ByteBuf::from(vec![1, 2, 3]),));
        assert_eq!(&bin.0[..], &[0x91, 0xC4, 3, 1, 2, 3]);
        assert_eq!(
            bind::<ByteBuf>(Protocol::MessagePack, &bin),
            Ok(ByteBuf::from(vec![1, 2, 3]))
        );
        struct Probe;
        impl<'de> Deserialize<'de> for Probe {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let readable = d.is_human_readable();
                IgnoredAny::deserialize(d)?;
                if readable {
                    Ok(Self)
                } else {
                    Err(de::Error::custom("binary"))
                }
            }
        }
        let one = args(Protocol::Json, &(1,));
        assert!(bind::<Probe>(Protocol::Json, &one).is_ok());
        let one = args(Protocol::MessagePack, &(1,));
        assert_eq!(
            bind::<Probe>(Protocol::MessagePack, &one).err().as_deref(),
            Some("binary")
        );
    }

    /// The testhub echoes a JS `Date` (MessagePack timestamp, ext type −1) and `bin` byte arrays
    /// unchanged: they must survive `rmpv::Value` and `ByteBuf` both ways.
    #[test]
    fn ext_and_bin_round_trips() {
        let mp = Protocol::MessagePack;
        let timestamps: [&[u8]; 3] = [
            &[0xD6, 0xFF, 0x38, 0x6D, 0x43, 0x80],
            &[0xD7, 0xFF, 0x00, 0x00, 0x00, 0x04, 0x38, 0x6D, 0x43, 0x80],
            &[
                0xC7, 0x0C, 0xFF, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x38, 0x6D, 0x43,
                0x80,
            ],
        ];
        for encoded in timestamps {
            let payload = Payload(Bytes::copy_from_slice(encoded));
            let value: rmpv::Value = mp.decode_value(&payload).unwrap();
            let header = if encoded[0] == 0xC7 { 3 } else { 2 };
            let data = encoded[header..].to_vec();
            assert_eq!(value, rmpv::Value::Ext(-1, data));
            assert_eq!(mp.encode_value(&value).unwrap(), payload);

            let mut args = vec![0x91];
            args.extend_from_slice(encoded);
            let args = Payload(args.into());
            let bound: rmpv::Value = bind(mp, &args).unwrap();
            assert_eq!(bound, value);
            let (bound,): (rmpv::Value,) = bind(mp, &args).unwrap();
            assert_eq!(mp.encode_value(&(bound,)).unwrap(), args);
        }

        let bytes = ByteBuf::from(vec![0u8, 1, 2, 255]);
        let encoded = mp.encode_value(&bytes).unwrap();
        assert_eq!(&encoded.0[..], &[0xC4, 4, 0, 1, 2, 255]);
        assert_eq!(mp.decode_value::<ByteBuf>(&encoded).unwrap(), bytes);
        let as_value: rmpv::Value = mp.decode_value(&encoded).unwrap();
        assert_eq!(as_value, rmpv::Value::Binary(vec![0, 1, 2, 255]));
        assert_eq!(mp.encode_value(&as_value).unwrap(), encoded);

        // A whole ComplexObject-shaped map survives rmpv::Value byte for byte.
        let complex = rmpv::Value::Map(vec![
            ("String".into(), "hello world".into()),
            (
                "IntArray".into(),
                vec![rmpv::Value::from(1), 2.into(), 3.into()].into(),
            ),
            ("ByteArray".into(), rmpv::Value::Binary(vec![1, 2, 3])),
            ("Guid".into(), "00010203-0405-0607-0706-050403020100".into()),
            (
                "DateTime".into(),
                rmpv::Value::Ext(-1, vec![0x38, 0x6D, 0x43, 0x80]),
            ),
        ]);
        let mut raw = Vec::new();
        rmpv::encode::write_value(&mut raw, &complex).unwrap();
        let payload = Payload(raw.into());
        let decoded: rmpv::Value = mp.decode_value(&payload).unwrap();
        assert_eq!(decoded, complex);
        assert_eq!(mp.encode_value(&decoded).unwrap(), payload);
    }
}
