//! The two pieces of the D-Bus wire protocol the gate does by hand on its
//! systemd side (see `relay` for why zbus cannot hold that connection):
//! the client's authentication, and removing the sender field from a
//! message's header.

use std::os::fd::AsFd;

use anyhow::{bail, ensure, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zbus::zvariant::serialized::Data;
use zbus::Message;

/// The client's side of the D-Bus authentication (EXTERNAL, with file
/// descriptor passing), as sd-bus does it: the server knows the uid from
/// the socket; the client says which uid it claims.
pub async fn authenticate(socket: &mut tokio::net::UnixStream) -> anyhow::Result<()> {
    // SAFETY: geteuid() cannot fail and touches no memory of ours.
    let uid = unsafe { libc::geteuid() };
    let hex: String = uid.to_string().bytes().map(|b| format!("{b:02x}")).collect();
    socket.write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes()).await?;
    let ok = line(socket).await?;
    ensure!(ok.starts_with("OK "), "authentication refused: {ok:?}");
    socket.write_all(b"NEGOTIATE_UNIX_FD\r\n").await?;
    let agreed = line(socket).await?;
    ensure!(agreed == "AGREE_UNIX_FD", "file descriptor passing refused: {agreed:?}");
    socket.write_all(b"BEGIN\r\n").await?;
    Ok(())
}

/// One line of the authentication dialogue, read a byte at a time so that
/// nothing after it is consumed.
async fn line(socket: &mut tokio::net::UnixStream) -> anyhow::Result<String> {
    let mut out = Vec::new();
    loop {
        let b = socket.read_u8().await.context("the server hung up while authenticating")?;
        out.push(b);
        if out.ends_with(b"\r\n") {
            out.truncate(out.len() - 2);
            return String::from_utf8(out).context("the server's answer is not text");
        }
        ensure!(out.len() <= 512, "the server's answer is too long");
    }
}

/// Header field code of the sender (D-Bus specification, "Header Fields").
const SENDER: u8 = 7;

/// `msg` without its sender header field; the same message when it has
/// none. Everything else (serial, reply serial, body, descriptors) is kept.
pub fn without_sender(msg: &Message) -> anyhow::Result<Message> {
    let data = msg.data();
    let bytes: &[u8] = data;
    let big_endian = match bytes.first() {
        Some(b'l') => false,
        Some(b'B') => true,
        other => bail!("unknown byte order {other:?}"),
    };
    let read_u32 = |at: usize| -> anyhow::Result<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4).and_then(|s| s.try_into().ok()).context("header cut short")?;
        Ok(if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    };
    // Fixed part (12 bytes), the fields' array length, the fields (each an
    // 8-aligned struct of a code and a variant), padding to 8, the body.
    let fields_end = 16 + read_u32(12)? as usize;
    ensure!(fields_end <= bytes.len(), "header fields run past the message");
    let mut kept = Vec::with_capacity(bytes.len());
    kept.extend_from_slice(bytes.get(..16).context("header cut short")?);
    let mut pos = 16;
    let mut dropped = false;
    while pos < fields_end {
        pos = pos.next_multiple_of(8);
        let start = pos;
        let code = *bytes.get(pos).context("header cut short")?;
        let sig_len = *bytes.get(pos + 1).context("header cut short")? as usize;
        let sig = bytes.get(pos + 2..pos + 2 + sig_len).context("header cut short")?;
        pos += 2 + sig_len + 1;
        pos = match sig {
            b"s" | b"o" => {
                let at = pos.next_multiple_of(4);
                at + 4 + read_u32(at)? as usize + 1
            }
            b"g" => pos + 1 + *bytes.get(pos).context("header cut short")? as usize + 1,
            b"u" => pos.next_multiple_of(4) + 4,
            other => bail!("header field {code} has type {:?}", String::from_utf8_lossy(other)),
        };
        ensure!(pos <= fields_end, "header field {code} runs past the header");
        if code == SENDER {
            dropped = true;
            continue;
        }
        // Each field starts 8-aligned here as it did there, so what is
        // aligned inside it stays aligned.
        kept.resize(kept.len().next_multiple_of(8), 0);
        kept.extend_from_slice(&bytes[start..pos]);
    }
    if !dropped {
        return Ok(msg.clone());
    }
    let fields_len = u32::try_from(kept.len() - 16).context("header too long")?;
    kept[12..16].copy_from_slice(&if big_endian {
        fields_len.to_be_bytes()
    } else {
        fields_len.to_le_bytes()
    });
    kept.resize(kept.len().next_multiple_of(8), 0);
    let body_start = fields_end.next_multiple_of(8);
    kept.extend_from_slice(bytes.get(body_start..).context("body cut short")?);
    let fds = data
        .fds()
        .iter()
        .map(|fd| fd.as_fd().try_clone_to_owned())
        .collect::<Result<Vec<_>, _>>()
        .context("duplicating the message's descriptors")?;
    let data = Data::new_fds(kept, data.context(), fds);
    // SAFETY: the bytes are a message zbus has parsed, less one whole
    // header field, with the fields' length adjusted; from_bytes parses
    // them again and fails on anything malformed.
    Ok(unsafe { Message::from_bytes(data) }?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as systemd sends it on its private socket: with a sender
    /// that is a well-known name. zbus would panic reading its header.
    fn from_systemd(fields: &[(u8, &str, &[u8])], body: &[u8], signature: &str) -> Message {
        // Little-endian method return, serial 9, reply to serial 5, built by hand.
        let mut m = vec![b'l', 2, 1, 1];
        m.extend((body.len() as u32).to_le_bytes());
        m.extend(9u32.to_le_bytes());
        m.extend([0; 4]);
        let mut push_field = |code: u8, sig: &str, value: &[u8]| {
            m.resize(m.len().next_multiple_of(8), 0);
            m.push(code);
            m.push(sig.len() as u8);
            m.extend(sig.as_bytes());
            m.push(0);
            if sig != "g" {
                m.resize(m.len().next_multiple_of(4), 0);
            }
            m.extend(value);
        };
        let string = |s: &str| {
            let mut v = (s.len() as u32).to_le_bytes().to_vec();
            v.extend(s.as_bytes());
            v.push(0);
            v
        };
        for (code, sig, value) in fields {
            push_field(*code, sig, value);
        }
        push_field(SENDER, "s", &string("org.freedesktop.systemd1"));
        push_field(8, "g", &[&[signature.len() as u8][..], signature.as_bytes(), &[0]].concat());
        let len = (m.len() - 16) as u32;
        m[12..16].copy_from_slice(&len.to_le_bytes());
        m.resize(m.len().next_multiple_of(8), 0);
        m.extend(body);
        let ctxt = zbus::zvariant::serialized::Context::new_dbus(zbus::zvariant::LE, 0);
        unsafe { Message::from_bytes(Data::new(m, ctxt)) }.expect("a well-formed message")
    }

    #[test]
    fn the_sender_is_dropped_and_the_rest_kept() {
        let body = {
            let mut b = 22u32.to_le_bytes().to_vec();
            b.extend(b"/org/freedesktop/job/7\0");
            b
        };
        let msg = from_systemd(&[(5, "u", &5u32.to_le_bytes())], &body, "o");
        let clean = without_sender(&msg).expect("rewritten");
        let header = clean.header();
        assert_eq!(header.sender(), None);
        assert_eq!(header.reply_serial().map(|s| s.get()), Some(5));
        assert_eq!(header.primary().serial_num().get(), 9);
        let body = clean.body();
        let path: zbus::zvariant::ObjectPath<'_> = body.deserialize().expect("the body");
        assert_eq!(path.as_str(), "/org/freedesktop/job/7");
    }

    #[test]
    fn a_message_without_a_sender_passes_unchanged() {
        let msg = Message::method_call("/org/freedesktop/systemd1", "Subscribe")
            .and_then(|b| b.build(&()))
            .expect("call");
        let same = without_sender(&msg).expect("unchanged");
        assert_eq!(same.data().bytes(), msg.data().bytes());
    }
}
