//! `wstore push` and `wstore pull`: arguments, the remote daemon, and the report.

use std::path::PathBuf;

use crate::client::DaemonClient;
use crate::error::Error;
use crate::progress::Progress;
use crate::transfer::http::{HttpEndpoint, REMOTE_TOKEN_ENV};
use crate::transfer::{transfer, Endpoint, TransferReport};

#[derive(Debug, clap::Args)]
pub struct TransferArgs {
    /// URL of the remote daemon (`wstore serve`), e.g. http://127.0.0.1:7070
    pub remote: String,
    /// Ref to copy; the other store gets a ref of the same name
    #[arg(value_name = "REF")]
    pub ref_name: String,
    /// File holding the remote daemon's bearer token [default: $WSTORE_REMOTE_TOKEN, else no token]
    #[arg(long, value_name = "FILE")]
    pub remote_token_file: Option<PathBuf>,
    /// Move the destination's ref even when the copied commit does not descend from the
    /// commit it names
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// The direction of a transfer, seen from this store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Push,
    Pull,
}

/// Runs `push` or `pull` between `local` (the store opened here, or the daemon that owns it)
/// and the remote daemon that `args` names.
pub fn run(local: &dyn Endpoint, direction: Direction, args: TransferArgs, progress: &dyn Progress) -> Result<i32, Error> {
    // Checked here, because the daemon would name a bad ref a bad path segment or target.
    crate::store::validate_name("ref", &args.ref_name)?;
    let remote = remote_endpoint(&args)?;
    let (source, destination): (&dyn Endpoint, &dyn Endpoint) = match direction {
        Direction::Push => (local, &remote),
        Direction::Pull => (&remote, local),
    };
    let report = transfer(source, destination, &args.ref_name, args.force, progress)?;
    print(&report, direction, &args.remote, args.json);
    Ok(0)
}

/// Builds the client of the remote daemon, after checking its URL.
fn remote_endpoint(args: &TransferArgs) -> Result<HttpEndpoint, Error> {
    // The client is built without TLS, so only plain HTTP URLs can work.
    let rest = args.remote.strip_prefix("http://").ok_or_else(|| Error::InvalidArgument {
        what: format!("REMOTE {}", args.remote),
        detail: "expected the daemon's URL, such as http://127.0.0.1:7070 (https is not supported)".into(),
    })?;
    if rest.trim_end_matches('/').is_empty() {
        return Err(Error::InvalidArgument { what: format!("REMOTE {}", args.remote), detail: "the URL names no host".into() });
    }
    let token = crate::client::discovery::read_token_or_env(args.remote_token_file.as_deref(), REMOTE_TOKEN_ENV)?;
    Ok(HttpEndpoint::remote(DaemonClient::new(&args.remote, token)))
}

fn print(report: &TransferReport, direction: Direction, remote: &str, json: bool) {
    if json {
        super::print_json(report);
        return;
    }
    let (verb, preposition) = match direction {
        Direction::Push => ("pushed", "to"),
        Direction::Pull => ("pulled", "from"),
    };
    println!("{verb} {} (commit {}) {preposition} {remote}", report.ref_name, report.commit);
    println!(
        "  objects: {} sent ({}), {} already present ({}), {} in all",
        report.objects_sent,
        super::human_bytes(report.bytes_sent),
        report.objects_present,
        super::human_bytes(report.bytes_present),
        report.objects_total
    );
    if report.forced {
        if let Some(previous) = report.previous {
            println!("  forced: the ref named {previous}, which the commit does not descend from");
        }
    }
}
