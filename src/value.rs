//! Values whose encoding follows the protocol, the way .NET's serializers do: bytes are
//! base64 text in JSON and `bin` in MessagePack; instants are ISO-8601 text in JSON and the
//! timestamp extension (type −1) in MessagePack. [`NativeValue`] keeps whatever the client
//! sent, byte for byte, for handlers that pass values through unchanged.
//!
//! The switch is serde's `is_human_readable()`: true for JSON, false for MessagePack.

use base64::Engine;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes: base64 text in JSON, `bin` in MessagePack (.NET `byte[]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Binary(pub Vec<u8>);

impl Serialize for Binary {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Binary {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map(Binary)
                .map_err(D::Error::custom)
        } else {
            serde_bytes::ByteBuf::deserialize(d).map(|b| Binary(b.into_vec()))
        }
    }
}

/// The name rmp-serde gives MessagePack extension values.
const EXT_NAME: &str = "_ExtStruct";

/// A UTC instant: ISO-8601 text in JSON (`2000-01-01T00:00:00Z`), the MessagePack timestamp
/// extension (type −1) in MessagePack, which the JS client decodes as a `Date`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Timestamp {
    /// The instant `seconds` after the Unix epoch.
    pub fn from_unix(seconds: i64) -> Self {
        Self { seconds, nanos: 0 }
    }

    /// Now, by the system clock.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> i64 {
        self.seconds * 1000 + i64::from(self.nanos / 1_000_000)
    }

    /// The MessagePack timestamp extension body (32, 64 or 96-bit form).
    fn ext_body(&self) -> Vec<u8> {
        if self.nanos == 0 && (0..=i64::from(u32::MAX)).contains(&self.seconds) {
            (self.seconds as u32).to_be_bytes().to_vec()
        } else if (0..1 << 34).contains(&self.seconds) {
            let v = (u64::from(self.nanos) << 34) | self.seconds as u64;
            v.to_be_bytes().to_vec()
        } else {
            let mut out = self.nanos.to_be_bytes().to_vec();
            out.extend_from_slice(&self.seconds.to_be_bytes());
            out
        }
    }

    fn from_ext_body(b: &[u8]) -> Option<Self> {
        match b.len() {
            4 => Some(Self::from_unix(i64::from(u32::from_be_bytes(
                b.try_into().ok()?,
            )))),
            8 => {
                let v = u64::from_be_bytes(b.try_into().ok()?);
                Some(Self {
                    seconds: (v & ((1 << 34) - 1)) as i64,
                    nanos: (v >> 34) as u32,
                })
            }
            12 => Some(Self {
                nanos: u32::from_be_bytes(b[..4].try_into().ok()?),
                seconds: i64::from_be_bytes(b[4..].try_into().ok()?),
            }),
            _ => None,
        }
    }

    /// ISO-8601 in UTC, with milliseconds only when there are any.
    pub fn to_rfc3339(&self) -> String {
        let days = self.seconds.div_euclid(86_400);
        let secs = self.seconds.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
        let ms = self.nanos / 1_000_000;
        if ms == 0 {
            format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
        } else {
            format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{ms:03}Z")
        }
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fff…](Z|±HH:MM)`.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return None;
        }
        let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let mut rest = &s[19..];
        let mut nanos = 0u32;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            let f = &frac[..digits];
            let padded: String = f.chars().chain(std::iter::repeat('0')).take(9).collect();
            nanos = padded.parse().ok()?;
            rest = &frac[digits..];
        }
        let offset = match rest {
            "Z" | "z" => 0,
            o if o.len() == 6 => {
                let sign = if o.starts_with('-') { -1 } else { 1 };
                sign * (o[1..3].parse::<i64>().ok()? * 3600 + o[4..6].parse::<i64>().ok()? * 60)
            }
            _ => return None,
        };
        let days = days_from_civil(y, mo as u32, d as u32);
        Some(Self {
            seconds: days * 86_400 + hh * 3600 + mm * 60 + ss - offset,
            nanos,
        })
    }
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_rfc3339())
        } else {
            let body = self.ext_body();
            s.serialize_newtype_struct(EXT_NAME, &(-1i8, serde_bytes::Bytes::new(&body)))
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            Self::parse_rfc3339(&text).ok_or_else(|| D::Error::custom("invalid ISO-8601 instant"))
        } else {
            #[derive(Deserialize)]
            #[serde(rename = "_ExtStruct")]
            struct Ext((i8, serde_bytes::ByteBuf));
            let Ext((kind, body)) = Ext::deserialize(d)?;
            if kind != -1 {
                return Err(D::Error::custom("not a timestamp extension"));
            }
            Self::from_ext_body(&body).ok_or_else(|| D::Error::custom("invalid timestamp"))
        }
    }
}

/// Any value, kept in the form its protocol gave it (a JSON value, or a MessagePack value
/// with `bin` and extensions intact), so it can be sent back exactly as received.
#[derive(Debug, Clone, PartialEq)]
pub enum NativeValue {
    /// From a JSON connection.
    Json(serde_json::Value),
    /// From a MessagePack connection.
    MessagePack(rmpv::Value),
}

impl Serialize for NativeValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Json(v) => v.serialize(s),
            Self::MessagePack(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for NativeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            serde_json::Value::deserialize(d).map(Self::Json)
        } else {
            rmpv::Value::deserialize(d).map(Self::MessagePack)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Protocol;

    #[test]
    fn timestamp_text_round_trip() {
        let t = Timestamp::parse_rfc3339("2002-04-01T10:20:15Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2002-04-01T10:20:15Z");
        assert_eq!(
            Timestamp::from_unix(946_684_800).to_rfc3339(),
            "2000-01-01T00:00:00Z"
        );
        let t = Timestamp::parse_rfc3339("2002-04-01T10:20:15.123Z").unwrap();
        assert_eq!(t.nanos, 123_000_000);
        assert_eq!(t.to_rfc3339(), "2002-04-01T10:20:15.123Z");
    }

    #[test]
    fn timestamp_is_the_msgpack_extension() {
        let p = Protocol::MessagePack
            .encode_value(&Timestamp::from_unix(946_684_800))
            .unwrap();
        // fixext4, type -1, big-endian seconds
        assert_eq!(&p.0[..], &[0xd6, 0xff, 0x38, 0x6d, 0x43, 0x80]);
        let back: Timestamp = Protocol::MessagePack.decode_value(&p).unwrap();
        assert_eq!(back, Timestamp::from_unix(946_684_800));
        let j = Protocol::Json
            .encode_value(&Timestamp::from_unix(946_684_800))
            .unwrap();
        assert_eq!(&j.0[..], b"\"2000-01-01T00:00:00Z\"");
    }

    #[test]
    fn binary_is_base64_or_bin() {
        let j = Protocol::Json.encode_value(&Binary(vec![1, 2, 3])).unwrap();
        assert_eq!(&j.0[..], b"\"AQID\"");
        let m = Protocol::MessagePack
            .encode_value(&Binary(vec![1, 2, 3]))
            .unwrap();
        assert_eq!(&m.0[..], &[0xc4, 3, 1, 2, 3]);
        let back: Binary = Protocol::MessagePack.decode_value(&m).unwrap();
        assert_eq!(back.0, vec![1, 2, 3]);
    }

    #[test]
    fn native_value_keeps_extensions() {
        let bytes = vec![
            0x82, 0xa1, b'a', 0xd6, 0xff, 0, 0, 0, 1, 0xa1, b'b', 0xc4, 1, 7,
        ];
        let p = crate::protocol::Payload(bytes.clone().into());
        let v: NativeValue = Protocol::MessagePack.decode_value(&p).unwrap();
        let again = Protocol::MessagePack.encode_value(&v).unwrap();
        assert_eq!(&again.0[..], &bytes[..]);
    }
}
