//! A DNS over QUIC client (RFC 9250) with dig-like output.
//!
//! ```text
//! doq-client [--ca PEM | --insecure] [--server-name NAME] @HOST[:PORT] NAME [TYPE]
//! ```
//!
//! Sends one query (TYPE defaults to A; the port to 853) and prints the answer as
//! `dig` does: header, question, answer, authority and additional sections. Exits
//! with status 0 when an answer arrived (whatever its response code), 1 otherwise.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use quay::doq::proto::op::{Message, MessageType, OpCode, Query};
use quay::doq::proto::rr::{Name, Record, RecordType};
use quay::io::{ClientParams, ClientTlsConfig};

#[derive(Parser, Debug)]
#[command(about = "DNS over QUIC client: one query, dig-like output")]
struct Args {
    /// Trust this CA (PEM) for the server's certificate.
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Do not verify the server's certificate.
    #[arg(long)]
    insecure: bool,
    /// The name the certificate is checked for (default: the server's host).
    #[arg(long)]
    server_name: Option<String>,
    /// The server, `@HOST[:PORT]` (IPv6 in brackets).
    server: String,
    /// The name to look up.
    name: String,
    /// The record type.
    #[arg(default_value = "A")]
    rtype: String,
}

/// `@HOST[:PORT]`: the host and the address to reach.
fn server(arg: &str) -> anyhow::Result<(String, SocketAddr)> {
    let s = arg
        .strip_prefix('@')
        .with_context(|| format!("the server {arg} must start with @"))?;
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']').context("an unclosed [")?;
        (h.to_owned(), p.strip_prefix(':'))
    } else if s.matches(':').count() > 1 {
        (s.to_owned(), None)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (s.to_owned(), None),
        }
    };
    let port: u16 = match port {
        Some(p) => p.parse().with_context(|| format!("bad port in {arg}"))?,
        None => quay::doq::DEFAULT_PORT,
    };
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    Ok((host, addr))
}

fn section(title: &str, records: &[Record]) {
    if records.is_empty() {
        return;
    }
    println!("\n;; {title} SECTION:");
    for r in records {
        println!("{r}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quay_examples::init_tracing();
    let args = Args::parse();
    let (host, addr) = server(&args.server)?;
    let rtype = RecordType::from_str(&args.rtype.to_ascii_uppercase())
        .map_err(|e| anyhow::anyhow!("type {}: {e}", args.rtype))?;
    let name =
        Name::from_str(&args.name).map_err(|e| anyhow::anyhow!("name {}: {e}", args.name))?;
    let mut params = ClientParams::new(&[]);
    params.tls = if args.insecure {
        ClientTlsConfig::insecure()
    } else if let Some(ca) = &args.ca {
        ClientTlsConfig::new().add_root_pem_file(ca)?
    } else {
        ClientTlsConfig::new()
    };
    params.server_name = args
        .server_name
        .clone()
        .or_else(|| host.parse::<IpAddr>().is_err().then(|| host.clone()));
    let started = Instant::now();
    let (conn, handle) =
        tokio::time::timeout(Duration::from_secs(10), quay::doq::connect(addr, params))
            .await
            .context("no connection within 10 s")??;
    let mut query = Message::new();
    query
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name, rtype));
    let answer = tokio::time::timeout(Duration::from_secs(10), handle.query(query))
        .await
        .context("no answer within 10 s")??;
    let elapsed = started.elapsed();
    conn.close(quay::doq::DOQ_NO_ERROR, b"").await;
    let h = answer.header();
    println!(
        ";; ->>HEADER<<- opcode: {:?}, status: {}, id: {}",
        h.op_code(),
        h.response_code(),
        h.id()
    );
    let mut flags = vec!["qr"];
    for (on, f) in [
        (h.authoritative(), "aa"),
        (h.truncated(), "tc"),
        (h.recursion_desired(), "rd"),
        (h.recursion_available(), "ra"),
    ] {
        if on {
            flags.push(f);
        }
    }
    println!(
        ";; flags: {}; QUERY: {}, ANSWER: {}, AUTHORITY: {}, ADDITIONAL: {}",
        flags.join(" "),
        answer.queries().len(),
        answer.answers().len(),
        answer.name_servers().len(),
        answer.additionals().len()
    );
    println!("\n;; QUESTION SECTION:");
    for q in answer.queries() {
        println!(";{}\t\t{}\t{}", q.name(), q.query_class(), q.query_type());
    }
    section("ANSWER", answer.answers());
    section("AUTHORITY", answer.name_servers());
    section("ADDITIONAL", answer.additionals());
    println!("\n;; Query time: {} msec", elapsed.as_millis());
    println!(";; SERVER: {addr} (QUIC, doq)");
    Ok(())
}
