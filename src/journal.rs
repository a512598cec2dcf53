//! A small writer of systemd-journald's native protocol: one datagram per
//! entry to `/run/systemd/journal/socket`, fields `KEY=value\n`, or, for a
//! value holding a newline, `KEY\n`, its length as 64-bit little endian,
//! the value and `\n` (systemd's "Native Journal Protocol"). Structured
//! fields reach the journal only this way; stderr carries a priority and a
//! line. Entries too large for one datagram are refused (mdext's are a few
//! hundred bytes); the caller then falls back to stderr.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// journald's native socket.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// Whether `k` is a field name journald accepts from a client: upper-case
/// letters, digits and `_`, not starting with `_` or a digit, at most 64
/// bytes.
pub fn valid_field(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && !k.starts_with('_')
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// The datagram for these fields. Fields with invalid names are left out.
pub fn encode(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        if !valid_field(k) {
            continue;
        }
        out.extend_from_slice(k.as_bytes());
        if v.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Decode a datagram (for tests and for reading back what was sent).
/// `None` if it is malformed.
pub fn decode(mut d: &[u8]) -> Option<Vec<(String, String)>> {
    let mut v = Vec::new();
    while !d.is_empty() {
        let nl = d.iter().position(|&b| b == b'\n')?;
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            v.push((
                String::from_utf8(line[..eq].to_vec()).ok()?,
                String::from_utf8(line[eq + 1..].to_vec()).ok()?,
            ));
            d = &d[nl + 1..];
        } else {
            let key = String::from_utf8(line.to_vec()).ok()?;
            let rest = &d[nl + 1..];
            let len = usize::try_from(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?)).ok()?;
            let val = rest.get(8..8 + len)?;
            if rest.get(8 + len) != Some(&b'\n') {
                return None;
            }
            v.push((key, String::from_utf8(val.to_vec()).ok()?));
            d = &rest[8 + len + 1..];
        }
    }
    Some(v)
}

/// A connection to journald (or to any datagram socket speaking its
/// protocol, for tests).
pub struct Journal {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Journal {
    /// Connect to the socket at `path`; `None` when nothing listens there
    /// (no journald: the caller writes to stderr instead).
    pub fn connect(path: &Path) -> Option<Journal> {
        let sock = UnixDatagram::unbound().ok()?;
        sock.connect(path).ok()?;
        // Never block the daemon on a slow journald: a full queue loses
        // the entry (reported by send's error), it does not stall.
        sock.set_nonblocking(true).ok()?;
        Some(Journal {
            sock,
            path: path.to_path_buf(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Send one entry.
    pub fn send(&self, fields: &[(&str, &str)]) -> io::Result<()> {
        let d = encode(fields);
        let n = self.sock.send(&d)?;
        if n != d.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short datagram"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names() {
        for ok in ["MESSAGE", "MDEXT_MD_DEVICE", "PRIORITY", "A1"] {
            assert!(valid_field(ok), "{ok}");
        }
        for bad in ["", "_PID", "message", "1A", "A-B", &"A".repeat(65)] {
            assert!(!valid_field(bad), "{bad}");
        }
    }

    #[test]
    fn encoding_round_trips_and_uses_the_binary_form_for_newlines() {
        let f = [("MESSAGE", "one\ntwo"), ("PRIORITY", "2"), ("bad", "x")];
        let d = encode(&f);
        assert_eq!(&d[..8], b"MESSAGE\n");
        assert_eq!(&d[8..16], &7u64.to_le_bytes());
        assert_eq!(
            decode(&d).expect("decode"),
            vec![
                ("MESSAGE".to_string(), "one\ntwo".to_string()),
                ("PRIORITY".to_string(), "2".to_string())
            ]
        );
        assert_eq!(encode(&[("A", "b")]), b"A=b\n");
        assert!(decode(b"A=b").is_none());
    }

    #[test]
    fn sends_to_a_fake_journal_socket() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("socket");
        assert!(Journal::connect(&p).is_none(), "nothing listens yet");
        let server = UnixDatagram::bind(&p).expect("bind");
        let j = Journal::connect(&p).expect("connect");
        assert_eq!(j.path(), p);
        j.send(&[("MESSAGE", "hello"), ("MDEXT_EVENT", "Fail")])
            .expect("send");
        let mut buf = vec![0u8; 4096];
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(
            decode(&buf[..n]).expect("decode"),
            vec![
                ("MESSAGE".to_string(), "hello".to_string()),
                ("MDEXT_EVENT".to_string(), "Fail".to_string())
            ]
        );
    }
}
