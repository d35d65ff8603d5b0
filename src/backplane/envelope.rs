//! The backplane's wire format: MessagePack arrays laid out as ASP.NET's Redis backplane
//! lays them out (`protocol-notes.md` §B.14), with tidings' extra items appended (readers
//! accept and ignore trailing items, so both sides stay forward compatible).
//!
//! * hub message: `[excluded: [str], {protocol: bin}, invocationId?, returnChannel?,
//!   origin: str, target: [kind, [str]]]`;
//! * group command: `[id, serverName, action (0 remove, 1 add), group, connectionId]`;
//! * ack: `[id, status]`;
//! * client-result return: `[protocolName, bin(Completion), status]`.
//!
//! Decoding never panics: anything malformed is an `Err`, counted and dropped by the caller.

use bytes::Bytes;
use rmp::Marker;

use crate::registry::{EncodedMessage, Target};

/// A hub message travelling between nodes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Envelope {
    pub target: Target,
    pub message: EncodedMessage,
    pub invocation_id: Option<String>,
    pub return_channel: Option<String>,
    pub origin: String,
}

const KIND_ALL: u8 = 0;
const KIND_CONNECTIONS: u8 = 1;
const KIND_GROUPS: u8 = 2;
const KIND_USERS: u8 = 3;

/// Status of an ack or a client-result return.
pub(crate) const STATUS_OK: u8 = 0;
pub(crate) const STATUS_NOT_FOUND: u8 = 1;
pub(crate) const STATUS_LIMIT: u8 = 2;
pub(crate) const STATUS_CLOSED: u8 = 3;
pub(crate) const STATUS_TIMEOUT: u8 = 4;

fn w_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = rmp::encode::write_str(out, s);
}

fn w_strs(out: &mut Vec<u8>, items: &[String]) {
    let _ = rmp::encode::write_array_len(out, items.len() as u32);
    for s in items {
        w_str(out, s);
    }
}

fn w_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => w_str(out, s),
        None => {
            let _ = rmp::encode::write_nil(out);
        }
    }
}

pub(crate) fn encode_envelope(env: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + env.message.json.len() + env.message.messagepack.len());
    let _ = rmp::encode::write_array_len(&mut out, 6);
    let (kind, names, except): (u8, &[String], &[String]) = match &env.target {
        Target::All { except } => (KIND_ALL, &[], except),
        Target::Connections(ids) => (KIND_CONNECTIONS, ids, &[]),
        Target::Groups { groups, except } => (KIND_GROUPS, groups, except),
        Target::Users(users) => (KIND_USERS, users, &[]),
    };
    w_strs(&mut out, except);
    let _ = rmp::encode::write_map_len(&mut out, 2);
    w_str(&mut out, "json");
    let _ = rmp::encode::write_bin(&mut out, &env.message.json);
    w_str(&mut out, "messagepack");
    let _ = rmp::encode::write_bin(&mut out, &env.message.messagepack);
    w_opt_str(&mut out, env.invocation_id.as_deref());
    w_opt_str(&mut out, env.return_channel.as_deref());
    w_str(&mut out, &env.origin);
    let _ = rmp::encode::write_array_len(&mut out, 2);
    let _ = rmp::encode::write_pfix(&mut out, kind);
    w_strs(&mut out, names);
    out
}

pub(crate) fn encode_group_command(
    id: u64,
    server: &str,
    add: bool,
    group: &str,
    connection_id: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + server.len() + group.len() + connection_id.len());
    let _ = rmp::encode::write_array_len(&mut out, 5);
    let _ = rmp::encode::write_uint(&mut out, id);
    w_str(&mut out, server);
    let _ = rmp::encode::write_pfix(&mut out, u8::from(add));
    w_str(&mut out, group);
    w_str(&mut out, connection_id);
    out
}

pub(crate) fn encode_ack(id: u64, status: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    let _ = rmp::encode::write_array_len(&mut out, 2);
    let _ = rmp::encode::write_uint(&mut out, id);
    let _ = rmp::encode::write_pfix(&mut out, status);
    out
}

pub(crate) fn encode_return(
    protocol: &str,
    completion: &[u8],
    status: u8,
    invocation_id: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + completion.len() + invocation_id.len());
    let _ = rmp::encode::write_array_len(&mut out, 4);
    w_str(&mut out, protocol);
    let _ = rmp::encode::write_bin(&mut out, completion);
    let _ = rmp::encode::write_pfix(&mut out, status);
    w_str(&mut out, invocation_id);
    out
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub &'static str);

type R<T> = Result<T, Malformed>;

/// A zero-copy reader over one payload.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn new(buf: Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    fn marker(&mut self) -> R<Marker> {
        let b = *self.buf.get(self.pos).ok_or(Malformed("truncated"))?;
        self.pos += 1;
        Ok(Marker::from_u8(b))
    }

    fn take(&mut self, n: usize) -> R<Bytes> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(Malformed("truncated"))?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn be(&mut self, n: usize) -> R<u64> {
        let b = self.take(n)?;
        Ok(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    }

    fn len_of(&mut self, m: Marker) -> R<Option<(u8, usize)>> {
        // (kind, len) where kind 0 = str, 1 = bin, 2 = array, 3 = map
        Ok(Some(match m {
            Marker::FixStr(n) => (0, n as usize),
            Marker::Str8 => (0, self.be(1)? as usize),
            Marker::Str16 => (0, self.be(2)? as usize),
            Marker::Str32 => (0, self.be(4)? as usize),
            Marker::Bin8 => (1, self.be(1)? as usize),
            Marker::Bin16 => (1, self.be(2)? as usize),
            Marker::Bin32 => (1, self.be(4)? as usize),
            Marker::FixArray(n) => (2, n as usize),
            Marker::Array16 => (2, self.be(2)? as usize),
            Marker::Array32 => (2, self.be(4)? as usize),
            Marker::FixMap(n) => (3, n as usize),
            Marker::Map16 => (3, self.be(2)? as usize),
            Marker::Map32 => (3, self.be(4)? as usize),
            _ => return Ok(None),
        }))
    }

    fn array(&mut self) -> R<usize> {
        match self.marker().and_then(|m| self.len_of(m))? {
            Some((2, n)) => Ok(n),
            _ => Err(Malformed("expected an array")),
        }
    }

    fn map(&mut self) -> R<usize> {
        match self.marker().and_then(|m| self.len_of(m))? {
            Some((3, n)) => Ok(n),
            _ => Err(Malformed("expected a map")),
        }
    }

    fn opt_str(&mut self) -> R<Option<String>> {
        let m = self.marker()?;
        if m == Marker::Null {
            return Ok(None);
        }
        match self.len_of(m)? {
            Some((0, n)) => {
                let b = self.take(n)?;
                String::from_utf8(b.to_vec())
                    .map(Some)
                    .map_err(|_| Malformed("invalid UTF-8"))
            }
            _ => Err(Malformed("expected a string")),
        }
    }

    fn str(&mut self) -> R<String> {
        self.opt_str()?.ok_or(Malformed("expected a string"))
    }

    fn bin(&mut self) -> R<Bytes> {
        match self.marker().and_then(|m| self.len_of(m))? {
            Some((0 | 1, n)) => self.take(n),
            _ => Err(Malformed("expected bytes")),
        }
    }

    fn uint(&mut self) -> R<u64> {
        match self.marker()? {
            Marker::FixPos(n) => Ok(u64::from(n)),
            Marker::U8 => self.be(1),
            Marker::U16 => self.be(2),
            Marker::U32 => self.be(4),
            Marker::U64 => self.be(8),
            _ => Err(Malformed("expected an unsigned integer")),
        }
    }

    fn strs(&mut self) -> R<Vec<String>> {
        let n = self.array()?;
        if n > self.buf.len() {
            return Err(Malformed("array longer than the payload"));
        }
        (0..n).map(|_| self.str()).collect()
    }
}

pub(crate) fn decode_envelope(buf: Bytes) -> R<Envelope> {
    let mut r = Reader::new(buf);
    let n = r.array()?;
    if n < 6 {
        return Err(Malformed("hub message with fewer than 6 items"));
    }
    let except = r.strs()?;
    let mut json = None;
    let mut messagepack = None;
    for _ in 0..r.map()? {
        let name = r.str()?;
        let data = r.bin()?;
        match name.as_str() {
            "json" => json = Some(data),
            "messagepack" => messagepack = Some(data),
            _ => {}
        }
    }
    let invocation_id = r.opt_str()?;
    let return_channel = r.opt_str()?;
    let origin = r.str()?;
    if r.array()? < 2 {
        return Err(Malformed("target with fewer than 2 items"));
    }
    let kind = r.uint()?;
    let names = r.strs()?;
    let target = match kind as u8 {
        KIND_ALL => Target::All { except },
        KIND_CONNECTIONS => Target::Connections(names),
        KIND_GROUPS => Target::Groups {
            groups: names,
            except,
        },
        KIND_USERS => Target::Users(names),
        _ => return Err(Malformed("unknown target kind")),
    };
    Ok(Envelope {
        target,
        message: EncodedMessage {
            json: json.ok_or(Malformed("no json encoding"))?,
            messagepack: messagepack.ok_or(Malformed("no messagepack encoding"))?,
        },
        invocation_id,
        return_channel,
        origin,
    })
}

/// A decoded group command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupCommand {
    pub id: u64,
    pub server: String,
    pub add: bool,
    pub group: String,
    pub connection_id: String,
}

pub(crate) fn decode_group_command(buf: Bytes) -> R<GroupCommand> {
    let mut r = Reader::new(buf);
    if r.array()? < 5 {
        return Err(Malformed("group command with fewer than 5 items"));
    }
    Ok(GroupCommand {
        id: r.uint()?,
        server: r.str()?,
        add: r.uint()? == 1,
        group: r.str()?,
        connection_id: r.str()?,
    })
}

pub(crate) fn decode_ack(buf: Bytes) -> R<(u64, u8)> {
    let mut r = Reader::new(buf);
    let n = r.array()?;
    if n < 1 {
        return Err(Malformed("empty ack"));
    }
    let id = r.uint()?;
    let status = if n >= 2 { r.uint()? as u8 } else { STATUS_OK };
    Ok((id, status))
}

/// A decoded client-result return: protocol name, framed Completion, status, invocation id.
pub(crate) fn decode_return(buf: Bytes) -> R<(String, Bytes, u8, Option<String>)> {
    let mut r = Reader::new(buf);
    let n = r.array()?;
    if n < 2 {
        return Err(Malformed("return with fewer than 2 items"));
    }
    let protocol = r.str()?;
    let completion = r.bin()?;
    let status = if n >= 3 { r.uint()? as u8 } else { STATUS_OK };
    let id = if n >= 4 { r.opt_str()? } else { None };
    Ok((protocol, completion, status, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> EncodedMessage {
        EncodedMessage {
            json: Bytes::from_static(b"{\"type\":1}\x1e"),
            messagepack: Bytes::from_static(&[0x03, 0x91, 0x01, 0x02]),
        }
    }

    #[test]
    fn envelopes_round_trip_for_every_target() {
        let targets = [
            Target::All {
                except: vec!["a".into(), "b".into()],
            },
            Target::Connections(vec!["c".into()]),
            Target::Groups {
                groups: vec!["g1".into(), "g2".into()],
                except: vec!["x".into()],
            },
            Target::Users(vec!["u".into()]),
        ];
        for target in targets {
            let env = Envelope {
                target,
                message: msg(),
                invocation_id: Some("r1".into()),
                return_channel: None,
                origin: "node".into(),
            };
            let bytes = encode_envelope(&env);
            assert_eq!(decode_envelope(Bytes::from(bytes)).unwrap(), env);
        }
    }

    #[test]
    fn control_messages_round_trip() {
        let c = encode_group_command(7, "srv", true, "g", "conn");
        assert_eq!(
            decode_group_command(Bytes::from(c)).unwrap(),
            GroupCommand {
                id: 7,
                server: "srv".into(),
                add: true,
                group: "g".into(),
                connection_id: "conn".into()
            }
        );
        assert_eq!(
            decode_ack(Bytes::from(encode_ack(1 << 40, STATUS_LIMIT))).unwrap(),
            (1 << 40, STATUS_LIMIT)
        );
        let r = decode_return(Bytes::from(encode_return("json", b"{}", STATUS_OK, "r9"))).unwrap();
        assert_eq!(
            r,
            (
                "json".into(),
                Bytes::from_static(b"{}"),
                STATUS_OK,
                Some("r9".into())
            )
        );
        // ASP.NET's shorter forms are accepted.
        let mut ack = Vec::new();
        rmp::encode::write_array_len(&mut ack, 1).unwrap();
        rmp::encode::write_uint(&mut ack, 3).unwrap();
        assert_eq!(decode_ack(Bytes::from(ack)).unwrap(), (3, STATUS_OK));
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let env = Envelope {
            target: Target::All { except: vec![] },
            message: msg(),
            invocation_id: None,
            return_channel: None,
            origin: "n".into(),
        };
        let good = encode_envelope(&env);
        for cut in 0..good.len() {
            assert!(decode_envelope(Bytes::copy_from_slice(&good[..cut])).is_err());
        }
        for junk in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0xc1],
            &[0x96, 0xc0],
            &[],
        ] {
            assert!(decode_envelope(Bytes::copy_from_slice(junk)).is_err());
            assert!(decode_group_command(Bytes::copy_from_slice(junk)).is_err());
            assert!(decode_ack(Bytes::copy_from_slice(junk)).is_err());
            assert!(decode_return(Bytes::copy_from_slice(junk)).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let b = Bytes::from(data);
            let _ = decode_envelope(b.clone());
            let _ = decode_group_command(b.clone());
            let _ = decode_ack(b.clone());
            let _ = decode_return(b);
        }
    }
}
