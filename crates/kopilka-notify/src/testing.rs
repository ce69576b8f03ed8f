//! Test support shared by this crate's tests and the server's: a small SMTP server on loopback
//! that accepts every message and keeps it, so tests check what a real SMTP client delivered.
//! It speaks just enough of RFC 5321: EHLO/HELO, MAIL, RCPT, DATA (with dot-unstuffing), RSET,
//! NOOP, QUIT, and STARTTLS (RFC 3207) when started with a TLS acceptor, in which case it refuses
//! mail until the connection is upgraded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A message as received: envelope and the raw RFC 5322 data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
    /// Whether the message came over a connection upgraded with STARTTLS.
    pub tls: bool,
}

/// The server's handle: its port and what it received.
#[derive(Clone)]
pub struct SmtpSink {
    pub port: u16,
    received: Arc<Mutex<Vec<ReceivedMail>>>,
}

/// Messages one connection may send: a bound, so a runaway client cannot fill memory.
const MESSAGES_PER_CONNECTION_MAX: usize = 1_000;

impl SmtpSink {
    /// Starts the server on 127.0.0.1 on a free port, without TLS.
    pub async fn start() -> SmtpSink {
        SmtpSink::start_with(None).await
    }

    /// Starts a server that offers STARTTLS with `acceptor` and takes mail only after it.
    pub async fn start_tls(acceptor: TlsAcceptor) -> SmtpSink {
        SmtpSink::start_with(Some(acceptor)).await
    }

    async fn start_with(tls: Option<TlsAcceptor>) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let port = listener.local_addr().expect("bound").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = SmtpSink { port, received: received.clone() };
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let received = received.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = session(socket, tls, received).await;
                });
            }
        });
        sink
    }

    pub fn received(&self) -> Vec<ReceivedMail> {
        self.received.lock().expect("sink lock").clone()
    }

    /// Waits up to `timeout` for at least `count` messages.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= count || tokio::time::Instant::now() >= deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn session(
    socket: tokio::net::TcpStream,
    tls: Option<TlsAcceptor>,
    received: Arc<Mutex<Vec<ReceivedMail>>>,
) -> std::io::Result<()> {
    let mut lines = BufReader::new(socket);
    lines.write_all(b"220 localhost Kopilka test SMTP\r\n").await?;
    let Some(acceptor) = tls else { return converse(lines, Mode::Plain, &received).await.map(|_| ()) };
    let Some(lines) = converse(lines, Mode::OffersTls, &received).await? else { return Ok(()) };
    // The client waits for the 220 before its handshake, so the buffer holds nothing to keep.
    let upgraded = acceptor.accept(lines.into_inner()).await?;
    converse(BufReader::new(upgraded), Mode::Upgraded, &received).await.map(|_| ())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    /// STARTTLS is offered and required before MAIL.
    OffersTls,
    Upgraded,
}

/// One SMTP conversation; returns the stream when the client asked for STARTTLS (and got 220).
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    mut lines: BufReader<S>,
    mode: Mode,
    received: &Mutex<Vec<ReceivedMail>>,
) -> std::io::Result<Option<BufReader<S>>> {
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut messages = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let command = line.trim_end().to_string();
        let verb = command.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" if mode == Mode::OffersTls => {
                lines.write_all(b"250-localhost\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 SMTPUTF8\r\n").await?
            }
            "EHLO" => lines.write_all(b"250-localhost\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n").await?,
            "HELO" => lines.write_all(b"250 localhost\r\n").await?,
            "STARTTLS" if mode == Mode::OffersTls => {
                lines.write_all(b"220 Ready to start TLS\r\n").await?;
                lines.flush().await?;
                return Ok(Some(lines));
            }
            "MAIL" | "RCPT" | "DATA" if mode == Mode::OffersTls => {
                lines.write_all(b"530 Must issue a STARTTLS command first\r\n").await?
            }
            "MAIL" => {
                from = address_in(&command);
                to.clear();
                lines.write_all(b"250 OK\r\n").await?;
            }
            "RCPT" => {
                to.push(address_in(&command));
                lines.write_all(b"250 OK\r\n").await?;
            }
            "DATA" => {
                lines.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                lines.flush().await?;
                let mut data = Vec::new();
                loop {
                    let mut raw = Vec::new();
                    if lines.read_until(b'\n', &mut raw).await? == 0 {
                        return Ok(None);
                    }
                    if raw == b".\r\n" || raw == b".\n" {
                        break;
                    }
                    let unstuffed = if raw.starts_with(b"..") { &raw[1..] } else { &raw[..] };
                    data.extend_from_slice(unstuffed);
                }
                messages += 1;
                if messages > MESSAGES_PER_CONNECTION_MAX {
                    lines.write_all(b"452 Too many messages\r\n").await?;
                    lines.flush().await?;
                    continue;
                }
                let mail = ReceivedMail { from: from.clone(), to: to.clone(), data, tls: mode == Mode::Upgraded };
                received.lock().expect("sink lock").push(mail);
                lines.write_all(b"250 OK queued\r\n").await?;
            }
            "RSET" | "NOOP" => lines.write_all(b"250 OK\r\n").await?,
            "QUIT" => {
                lines.write_all(b"221 Bye\r\n").await?;
                lines.flush().await?;
                return Ok(None);
            }
            _ => lines.write_all(b"502 Command not implemented\r\n").await?,
        }
        lines.flush().await?;
    }
}

fn address_in(command: &str) -> String {
    match (command.find('<'), command.find('>')) {
        (Some(start), Some(end)) if end > start => command[start + 1..end].to_string(),
        _ => String::new(),
    }
}
