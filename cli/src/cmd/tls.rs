//! `kiln tls`: a CA, certificates and bearer tokens for a cluster that runs mutual TLS, with the
//! ergonomics of `nomad tls ca create` / `cert create`: a secure three-node cluster is
//! `kiln tls init`, then each node's `[tls]` pointing at its files.
//!
//! Every certificate names its holder in one SAN URI `spiffe://kiln/<role>/<name>`; schedulers
//! also carry the DNS name `scheduler.kiln`, which clients check whatever address they dialled.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use kiln_config::{CertIdentity, Role};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use crate::cmd::Context;
use crate::output::{self, OutputFormat};

#[derive(clap::Args)]
#[command(after_long_help = "A secure three-node cluster:\n  \
kiln tls init ./tls --nodes 3 --workers 4 --host kiln-1 --host kiln-2 --host kiln-3\n  \
# node i: [scheduler.tls] ca_file = \"tls/ca.pem\", cert_file = \"tls/node-<i>.pem\", key_file = \"tls/node-<i>-key.pem\"\n  \
# worker: [worker.tls] with worker-<n>.pem and its id set to worker-<n>\n  \
kiln --ca tls/ca.pem --cert tls/admin.pem --key tls/admin-key.pem --scheduler https://kiln-1:7450 status\n\n\
Keep ca-key.pem off the nodes: it is only needed to issue more certificates (`kiln tls cert`).")]
pub struct Args {
    #[command(subcommand)]
    command: TlsCommand,
}

#[derive(clap::Subcommand)]
enum TlsCommand {
    /// Write a new CA and certificates for N scheduler nodes, M workers and an admin client.
    Init(InitArgs),
    /// Issue one more certificate from the CA in DIR (a new node, worker or client).
    Cert(CertArgs),
    /// Print a new bearer token and the `[[scheduler.tokens]]` entry (its SHA-256) for the config.
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct InitArgs {
    /// Directory to write into (created; must not hold a CA already).
    dir: PathBuf,
    /// Scheduler nodes: node-1 … node-N, with Raft ids 1 … N.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Workers: worker-1 … worker-M (the worker's id must match).
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Host names or IP addresses every node certificate is also valid for (repeat). Clients check
    /// `scheduler.kiln` anyway; these help tools that check the dialled name.
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// Years the CA is valid.
    #[arg(long, default_value_t = 10)]
    ca_years: i32,
    /// Years each certificate is valid.
    #[arg(long, default_value_t = 2)]
    years: i32,
    /// Succeed without writing anything when DIR already holds a CA (for an init container that
    /// runs on every start).
    #[arg(long)]
    if_missing: bool,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["node", "worker", "admin", "submit"])))]
struct CertArgs {
    /// Directory holding ca.pem and ca-key.pem (as `kiln tls init` wrote them); the new files go there.
    #[arg(long)]
    dir: PathBuf,
    /// A scheduler node with this Raft id.
    #[arg(long)]
    node: Option<u64>,
    /// A worker with this id.
    #[arg(long)]
    worker: Option<String>,
    /// A client with the admin role, by name.
    #[arg(long)]
    admin: Option<String>,
    /// A client with the submit role (submit and read), by name.
    #[arg(long)]
    submit: Option<String>,
    /// Extra host names or IPs of a node certificate.
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    #[arg(long, default_value_t = 2)]
    years: i32,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// What the token may do: submit or admin (workers and peers use certificates).
    #[arg(long, value_parser = ["submit", "admin"])]
    role: String,
    /// Who holds it (shown in refusals and logs).
    #[arg(long)]
    name: String,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    match args.command {
        TlsCommand::Init(a) => init(ctx, a),
        TlsCommand::Cert(a) => cert(ctx, a),
        TlsCommand::Token(a) => token(ctx, a),
    }
}

/// The current year, for validity periods (certificates start on January 1st of it).
fn this_year() -> i32 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    1970 + (secs / 31_556_952) as i32
}

fn validity(params: &mut CertificateParams, years: i32) {
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years.max(1), 1, 1);
}

fn ca_params(years: i32) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "Kiln cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, years);
    params
}

fn leaf_params(
    who: &CertIdentity,
    hosts: &[String],
    server_name: &str,
    years: i32,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, file_stem(who));
    params.subject_alt_names.push(SanType::URI(who.uri().try_into()?));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if let CertIdentity::Node(_) = who {
        // A node is a server to clients and workers, and a client of its peers.
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        let mut names = vec![server_name.to_owned(), "localhost".to_owned(), "127.0.0.1".to_owned()];
        names.extend(hosts.iter().cloned());
        names.dedup();
        for name in names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into().with_context(|| format!("bad host name {name:?}"))?),
            });
        }
    }
    validity(&mut params, years);
    Ok(params)
}

fn file_stem(who: &CertIdentity) -> String {
    match who {
        CertIdentity::Node(id) => format!("node-{id}"),
        CertIdentity::Worker(id) => id.clone(),
        CertIdentity::Client { name, .. } => name.clone(),
    }
}

/// Writes `contents` to a new file; keys are readable by their owner only.
fn write_new(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Signs a certificate for `who` and writes `<stem>.pem` and `<stem>-key.pem` into `dir`.
fn issue(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    who: &CertIdentity,
    hosts: &[String],
    years: i32,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let stem = file_stem(who);
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}-key.pem"));
    if cert_path.exists() || key_path.exists() {
        bail!("{} or its key already exists: remove them first to issue a new one", cert_path.display());
    }
    let key = KeyPair::generate()?;
    let cert = leaf_params(who, hosts, kiln_config::SCHEDULER_SERVER_NAME, years)?.signed_by(&key, issuer)?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}

#[derive(serde::Serialize)]
struct Issued {
    identity: String,
    role: Role,
    cert: PathBuf,
    key: PathBuf,
}

fn report(ctx: &Context, ca: Option<&Path>, issued: &[Issued]) -> anyhow::Result<()> {
    if ctx.output == OutputFormat::Json {
        return output::json(&serde_json::json!({ "ca": ca, "issued": issued }));
    }
    if let Some(ca) = ca {
        println!("CA        {} (its key beside it: keep that one off the nodes)", ca.display());
    }
    let rows: Vec<Vec<String>> = issued
        .iter()
        .map(|i| {
            vec![i.role.to_string(), i.identity.clone(), i.cert.display().to_string(), i.key.display().to_string()]
        })
        .collect();
    output::table(&["ROLE", "IDENTITY", "CERTIFICATE", "KEY"], &rows);
    Ok(())
}

fn init(ctx: &Context, a: InitArgs) -> anyhow::Result<()> {
    if a.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let ca_path = a.dir.join("ca.pem");
    if ca_path.exists() && a.if_missing {
        if ctx.output == OutputFormat::Json {
            return output::json(&serde_json::json!({ "ca": ca_path, "issued": [] }));
        }
        println!("{} exists: nothing written", ca_path.display());
        return Ok(());
    }
    if ca_path.exists() {
        bail!(
            "{} exists: this directory already has a CA (use `kiln tls cert --dir` to issue more)",
            ca_path.display()
        );
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("cannot create {}", a.dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let params = ca_params(a.ca_years);
    let ca_cert = params.self_signed(&ca_key)?;
    write_new(&a.dir.join("ca-key.pem"), &ca_key.serialize_pem(), true)?;
    write_new(&ca_path, &ca_cert.pem(), false)?;
    let issuer = Issuer::new(params, ca_key);
    let mut who: Vec<CertIdentity> = (1..=a.nodes).map(CertIdentity::Node).collect();
    who.extend((1..=a.workers).map(|n| CertIdentity::Worker(format!("worker-{n}"))));
    who.push(CertIdentity::Client { role: Role::Admin, name: "admin".into() });
    let mut issued = Vec::new();
    for w in &who {
        let (cert, key) = issue(&a.dir, &issuer, w, &a.hosts, a.years)?;
        issued.push(Issued { identity: w.uri(), role: w.role(), cert, key });
    }
    report(ctx, Some(&ca_path), &issued)
}

fn cert(ctx: &Context, a: CertArgs) -> anyhow::Result<()> {
    let read = |name: &str| {
        let path = a.dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let ca_key = KeyPair::from_pem(&read("ca-key.pem")?).context("ca-key.pem is not a private key")?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, ca_key).context("ca.pem is not a CA certificate")?;
    let who = match (a.node, a.worker, a.admin, a.submit) {
        (Some(0), ..) => bail!("--node: Raft ids start at 1"),
        (Some(id), ..) => CertIdentity::Node(id),
        (_, Some(id), ..) => CertIdentity::Worker(id),
        (_, _, Some(name), _) => CertIdentity::Client { role: Role::Admin, name },
        (_, _, _, Some(name)) => CertIdentity::Client { role: Role::Submit, name },
        _ => bail!("say whom the certificate is for: --node, --worker, --admin or --submit"),
    };
    if CertIdentity::from_uri(&who.uri()).as_ref() != Some(&who) {
        bail!("{:?} cannot be a name in a certificate (no '/', not empty)", file_stem(&who));
    }
    let (cert, key) = issue(&a.dir, &issuer, &who, &a.hosts, a.years)?;
    report(ctx, None, &[Issued { identity: who.uri(), role: who.role(), cert, key }])
}

fn token(ctx: &Context, a: TokenArgs) -> anyhow::Result<()> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let token = format!("kiln_{}", hex::encode(bytes));
    let sha256 = kiln_scheduler::token_hash(&token);
    if ctx.output == OutputFormat::Json {
        return output::json(&serde_json::json!({ "token": token, "name": a.name, "role": a.role, "sha256": sha256 }));
    }
    println!("token (give it to {}; it is not stored anywhere): {token}\n", a.name);
    println!("add to every scheduler's config:\n");
    println!("[[scheduler.tokens]]\nname = {:?}\nrole = {:?}\nsha256 = {:?}", a.name, a.role, sha256);
    Ok(())
}
