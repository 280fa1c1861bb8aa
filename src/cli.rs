//! The command line: arguments, dispatch, and human or JSON output. Exit codes: 0 success,
//! 1 a check found differences or problems (reserved for `diff` and `fsck`), 2 any error.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::Error;
use crate::progress::{NoProgress, Progress};
use crate::client::discovery::LiveDaemon;
use crate::client::CommitRequest;
use crate::store::{BaseReport, BaseView, CheckoutOptions, CheckoutReport, CommitOptions, CommitReport, Details, LogEntry, Store, StoreListing, Target};

mod maintenance;
pub use maintenance::{open_waiting, parse_duration};

mod diff_command;

mod transfer_command;
use transfer_command::{Direction, TransferArgs};

#[derive(Debug, Parser)]
#[command(name = "wstore", version, about = "A version store for model weights: bases kept once, fine-tunes kept as deltas")]
pub struct Cli {
    /// Store directory [default: $WSTORE_HOME, else the per-user data directory + /wstore]
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Print debug logs to stderr, and whether the command goes through a daemon or opens the store
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// File holding the bearer token of the daemon that owns the store [default: $WSTORE_TOKEN].
    /// Give it before the subcommand: `wstore --token-file FILE ls`
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Hide progress bars
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Seconds to wait while another wstore process has the store open, before failing
    #[arg(long, global = true, value_name = "SECS", env = "WSTORE_LOCK_TIMEOUT", default_value_t = 60)]
    pub lock_timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a store
    Init {
        /// Keep objects in an S3-compatible bucket, as s3://BUCKET/PREFIX (credentials and
        /// endpoint from the AWS_* variables or the file named by WSTORE_S3_CONFIG)
        #[arg(long, value_name = "URL")]
        objects: Option<String>,
        /// Local read cache of an S3 store, in MiB (0 disables it) [default: 1024]
        #[arg(long, value_name = "MIB", requires = "objects")]
        cache_mb: Option<u64>,
    },
    /// Register and list base checkpoints
    #[command(subcommand)]
    Base(BaseCommand),
    /// Commit a fine-tune as deltas against a base
    Commit {
        /// A .safetensors file, a *.safetensors.index.json, or a model directory
        path: PathBuf,
        /// Base name or id prefix
        #[arg(long)]
        base: String,
        /// Ref to create, or to advance if it exists
        #[arg(long)]
        name: Option<String>,
        /// Commit message
        #[arg(long, short, default_value = "")]
        message: String,
        /// Parent ref or commit [default: the commit --name points at]
        #[arg(long)]
        parent: Option<String>,
        /// Author [default: $WSTORE_AUTHOR, else $USER]
        #[arg(long)]
        author: Option<String>,
        /// Compare fine-tune tensor FINETUNE_PREFIX+x with base tensor BASE_PREFIX+x (e.g. "=bert.")
        #[arg(long, value_name = "FINETUNE_PREFIX=BASE_PREFIX")]
        map_prefix: Option<String>,
        /// Do not detect a prefix difference between fine-tune and base names
        #[arg(long)]
        no_align: bool,
        #[command(flatten)]
        codec: CodecArgs,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Write a stored commit or base back out, verified
    Checkout {
        /// Ref, commit id prefix, base name or base id prefix
        target: String,
        /// Output file (single-file checkpoints) or directory [default: ./TARGET.safetensors or ./TARGET]
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Replace an existing output file, or write into a non-empty output directory
        /// (replacing files of the same names)
        #[arg(long)]
        force: bool,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// List bases and commits with their sizes
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show the lineage of a commit down to its base
    Log {
        target: String,
        #[arg(long)]
        json: bool,
    },
    /// Show one commit or base tensor by tensor
    Show {
        target: String,
        #[arg(long)]
        json: bool,
    },
    /// Check every object, delta and catalog reference; exit 1 if problems are found
    Fsck {
        /// Also rebuild every stored file and compare it with its recorded BLAKE3
        #[arg(long)]
        full: bool,
        /// Delete object files that fail their hash check, so that adding or committing their
        /// source again writes them anew
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete objects that no base or commit record reaches
    Gc {
        /// List what would be deleted, and delete nothing
        #[arg(long)]
        dry_run: bool,
        /// Keep unreachable objects modified within this time (90s, 15m, 1h, 2d; bare number: seconds)
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        grace: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
    /// Delete a ref (the commit stays), or with --commit a commit record nothing depends on
    #[command(group(clap::ArgGroup::new("what").required(true).args(["ref_name", "commit"])))]
    Rm {
        /// Ref to delete
        #[arg(value_name = "REF")]
        ref_name: Option<String>,
        /// Commit id prefix to delete; rejected while a ref or a child commit needs it
        #[arg(long, value_name = "ID")]
        commit: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Serve the store over HTTP: checkouts with byte ranges, and the read and write API as JSON
    Serve {
        /// Address and port to listen on; port 0 picks a free port. Any address other than
        /// loopback requires a bearer token
        #[arg(long, value_name = "ADDR", default_value = crate::daemon::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// File holding the bearer token every request must send [default: $WSTORE_TOKEN, else no token]
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Memory for rebuilt tensors kept for later requests, in MiB
        #[arg(long, value_name = "MIB", default_value_t = crate::daemon::cache::DEFAULT_CACHE_MIB)]
        cache_mb: u64,
        /// Maximum number of connections served at once; more wait in the listen backlog
        #[arg(long, value_name = "N", default_value_t = crate::daemon::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
        /// Maximum size of one upload, in GiB
        #[arg(long, value_name = "GIB", default_value_t = crate::daemon::DEFAULT_MAX_UPLOAD_GIB)]
        max_upload_gb: u64,
    },
    /// Compare two checkpoints tensor by tensor (exit code 0: no differences, 1: differences, 2: error)
    Diff(diff_command::DiffArgs),
    /// Copy a ref with its commits, base and the objects the remote daemon lacks to that daemon
    Push(TransferArgs),
    /// Copy a ref with its commits, base and the objects this store lacks from a remote daemon
    Pull(TransferArgs),
}

/// Codec options of `commit`. The daemon's `POST /v1/commits` takes the same fields in JSON,
/// with the same defaults.
#[derive(Debug, Clone, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CodecArgs {
    /// Codec for changed tensors: `ultradelta` (lossy within --max-error) or `lossless` (exact)
    #[arg(long, default_value = "ultradelta", value_parser = ["ultradelta", "lossless"])]
    pub codec: String,
    /// UltraDelta: target mean sparsity p in [0, 1), e.g. 0.97 as in the published runs. It
    /// switches from the per-tensor error budget to the published fixed-settings steps
    #[arg(long, allow_negative_numbers = true)]
    pub sparsity: Option<f64>,
    /// UltraDelta: quantization bits, 1 to 8 [default: 4 with --sparsity, else searched from 2 to 8]
    #[arg(long)]
    pub bits: Option<u8>,
    /// UltraDelta: sparsity step between variance bands
    #[arg(long, default_value_t = crate::codec::ultradelta::DEFAULT_STEP, allow_negative_numbers = true)]
    pub step: f64,
    /// UltraDelta: extra factor on the 1/(1-p) rescale
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub rescale: f64,
    /// UltraDelta: `seeded` (mask drawn from the seed, no positions stored; smaller) or `grouped` (exact per-level counts, positions stored)
    #[arg(long, default_value = "seeded", value_parser = ["grouped", "seeded"])]
    pub mask_mode: String,
    /// UltraDelta: per-tensor budget on ||W_rec - W_ft|| / ||W_ft||
    #[arg(long, default_value_t = crate::codec::ultradelta::DEFAULT_MAX_ERROR, allow_negative_numbers = true)]
    pub max_error: f64,
    /// UltraDelta: seed of the random pruning masks
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// UltraDelta: store the commit even when tensors exceed --max-error under explicit settings
    #[arg(long)]
    pub accept_error: bool,
    /// UltraDelta: also compress float tensors whose names match this pattern (`*` and `?`), repeatable
    #[arg(long, value_name = "PATTERN")]
    pub lossy_include: Vec<String>,
    /// UltraDelta: store tensors whose names match this pattern exactly, repeatable
    #[arg(long, value_name = "PATTERN")]
    pub lossy_exclude: Vec<String>,
}

impl Default for CodecArgs {
    /// Returns the defaults clap applies when no codec flag is given.
    fn default() -> Self {
        CodecArgs {
            codec: "ultradelta".into(),
            sparsity: None,
            bits: None,
            step: crate::codec::ultradelta::DEFAULT_STEP,
            rescale: 1.0,
            mask_mode: "seeded".into(),
            max_error: crate::codec::ultradelta::DEFAULT_MAX_ERROR,
            seed: 0,
            accept_error: false,
            lossy_include: Vec::new(),
            lossy_exclude: Vec::new(),
        }
    }
}

impl CodecArgs {
    /// Turns the options into a codec choice, rejecting values clap would reject.
    pub fn to_choice(&self) -> Result<crate::store::CodecChoice, Error> {
        if self.codec == "lossless" {
            return Ok(crate::store::CodecChoice::Lossless);
        }
        if self.codec != "ultradelta" {
            return Err(Error::InvalidArgument { what: format!("--codec {}", self.codec), detail: "expected ultradelta or lossless".into() });
        }
        let mask_mode = crate::store::parse_mask_mode(&self.mask_mode).ok_or_else(|| Error::InvalidArgument {
            what: format!("--mask-mode {}", self.mask_mode),
            detail: "expected grouped or seeded".into(),
        })?;
        let settings = crate::codec::ultradelta::Settings {
            sparsity: self.sparsity,
            bits: self.bits,
            step: self.step,
            extra_rescale: self.rescale,
            mask_mode,
            max_error: self.max_error,
            seed: self.seed,
            ..Default::default()
        };
        Ok(crate::store::CodecChoice::UltraDelta(crate::store::LossyOptions {
            settings,
            accept_error: self.accept_error,
            policy: crate::store::TensorPolicy { include: self.lossy_include.clone(), exclude: self.lossy_exclude.clone() },
        }))
    }
}

#[derive(Debug, Subcommand)]
pub enum BaseCommand {
    /// Register a base checkpoint under a name
    Add {
        name: String,
        /// A .safetensors file, a *.safetensors.index.json, or a model directory
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List bases
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a base name; the last name deletes the base, rejected while commits depend on it
    Rm {
        name: String,
        /// Also delete the commits that depend on the base, and their refs
        #[arg(long)]
        with_commits: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Resolves the store directory: --store, else $WSTORE_HOME, else the per-user data dir.
pub fn store_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(dir) = flag {
        return dir.to_path_buf();
    }
    if let Some(home) = std::env::var_os("WSTORE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("wstore")
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
struct BarProgress {
    bar: ProgressBar,
}

impl Progress for BarProgress {
    fn start(&self, label: &str, total_bytes: u64) {
        self.bar.set_length(total_bytes);
        self.bar.set_position(0);
        self.bar.set_message(label.to_string());
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn progress_for(quiet: bool) -> Box<dyn Progress> {
    if quiet || !std::io::stderr().is_terminal() {
        return Box::new(NoProgress);
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Box::new(BarProgress { bar })
}

/// Formats a byte count with binary units.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Formats original / stored, or "no new bytes" when nothing was stored.
fn ratio_text(original: u64, stored: u64) -> String {
    if stored == 0 {
        "no new bytes".to_string()
    } else {
        format!("{:.2}x", original as f64 / stored as f64)
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("wstore: failed to format JSON: {e}"),
    }
}

fn format_time(secs: u64) -> String {
    // Days since the epoch to a civil date (proleptic Gregorian), so no time crate is needed.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Runs one parsed command; returns the process exit code. When a live daemon owns the store,
/// the command goes through its HTTP API; otherwise the store is opened here.
pub fn run(cli: Cli) -> Result<i32, Error> {
    let root = store_dir(cli.store.as_deref());
    let progress = progress_for(cli.quiet);
    let lock_timeout = std::time::Duration::from_secs(cli.lock_timeout);
    let quiet = cli.quiet;
    let open = |root: &Path| open_waiting(root, lock_timeout, quiet);
    let token = crate::client::discovery::read_token(cli.token_file.as_deref())?;
    if let Some(daemon) = crate::client::discover(&root, token)? {
        if cli.verbose {
            eprintln!("using daemon at {}", daemon.client.url());
        }
        return run_through_daemon(&daemon, &root, cli.command, progress.as_ref());
    }
    if cli.verbose {
        eprintln!("opening store at {} directly", root.display());
    }
    match cli.command {
        Command::Init { objects, cache_mb } => {
            let existed = root.join("catalog").exists();
            match objects {
                Some(url) => Store::init_with_objects(&root, &url, cache_mb.unwrap_or(crate::store::DEFAULT_CACHE_MB))?,
                None => Store::init(&root)?,
            };
            if existed {
                println!("store already exists at {}", root.display());
            } else {
                println!("initialised empty store at {}", root.display());
            }
        }
        Command::Base(BaseCommand::Add { name, path, json }) => {
            let store = open(&root)?;
            let report = store.add_base(&name, &path, progress.as_ref())?;
            print_base_added(&name, &report, json);
        }
        Command::Base(BaseCommand::List { json }) => {
            let store = open(&root)?;
            print_base_list(&store.list()?.bases, json);
        }
        Command::Commit { path, base, name, message, parent, author, map_prefix, no_align, codec, json } => {
            let store = open(&root)?;
            let codec = codec.to_choice()?;
            let options = CommitOptions { base, name, message, parent, author, map_prefix, no_align, codec };
            let report = store.commit(&path, &options, progress.as_ref())?;
            print_commit(&report, json);
        }
        Command::Checkout { target, output, force, json } => {
            let store = open(&root)?;
            let resolved = store.resolve(&target)?;
            let (snapshot, _) = store.snapshot_of(resolved)?;
            let output = checkout_output(output, &snapshot.layout, &target);
            let report = store.checkout(resolved, &output, &CheckoutOptions { force }, progress.as_ref())?;
            print_checkout(&report, &target, matches!(resolved, Target::Commit(_)), json);
        }
        Command::Ls { json } => {
            let store = open(&root)?;
            print_listing(&store.list()?, json);
        }
        Command::Log { target, json } => {
            let store = open(&root)?;
            print_log(&store.log(&target)?, json);
        }
        Command::Serve { listen, token_file, cache_mb, max_connections, max_upload_gb } => {
            let config = crate::daemon::ServeConfig {
                listen,
                token: crate::daemon::auth::BearerToken::from_file_or_env(token_file.as_deref())?,
                cache_bytes: cache_mb.saturating_mul(1 << 20),
                max_connections,
                max_upload_bytes: max_upload_gb.saturating_mul(1 << 30),
            };
            crate::daemon::serve(&root, config)?;
        }
        Command::Show { target, json } => {
            let store = open(&root)?;
            print_show(&store.show(&target)?, json);
        }
        Command::Fsck { full, repair, json } => return maintenance::run_fsck(&open(&root)?, full, repair, json),
        Command::Gc { dry_run, grace, json } => return maintenance::run_gc(&open(&root)?, dry_run, grace, json),
        Command::Rm { ref_name, commit, json } => {
            return maintenance::run_rm(&open(&root)?, ref_name.as_deref(), commit.as_deref(), json)
        }
        Command::Base(BaseCommand::Rm { name, with_commits, json }) => {
            return maintenance::run_base_rm(&open(&root)?, &name, with_commits, json)
        }
        Command::Diff(args) => return diff_command::run(&root, args),
        Command::Push(args) => return transfer_command::run(&open(&root)?, Direction::Push, args, progress.as_ref()),
        Command::Pull(args) => return transfer_command::run(&open(&root)?, Direction::Pull, args, progress.as_ref()),
    }
    Ok(0)
}

/// Runs a command through the daemon that owns the store at `root`, printing what the same
/// command prints without a daemon. Paths go to the daemon absolute, because it does not share
/// this process's working directory; checkouts are written here, by this process.
fn run_through_daemon(daemon: &LiveDaemon, root: &Path, command: Command, progress: &dyn Progress) -> Result<i32, Error> {
    let client = &daemon.client;
    match command {
        Command::Init { .. } => println!("store already exists at {}", root.display()),
        Command::Base(BaseCommand::Add { name, path, json }) => {
            let report = client.add_base(&name, &absolute(&path)?)?;
            print_base_added(&name, &report, json);
        }
        Command::Base(BaseCommand::List { json }) => print_base_list(&client.bases()?, json),
        Command::Commit { path, base, name, message, parent, author, map_prefix, no_align, codec, json } => {
            // Invalid codec options fail here with the same message as without a daemon.
            codec.to_choice()?;
            let author = Some(crate::store::default_author(author));
            let request = CommitRequest { path: Some(absolute(&path)?), upload: None, base, name, message, parent, author, map_prefix, no_align, codec };
            print_commit(&client.commit(&request)?, json);
        }
        Command::Checkout { target, output, force, json } => {
            let manifest = client.checkout_manifest(&target)?;
            let output = checkout_output(output, &manifest.layout, &target);
            let report = crate::client::checkout::checkout(client, root, &manifest, &output, force, progress)?;
            print_checkout(&report, &target, manifest.kind == "commit", json);
        }
        Command::Ls { json } => print_listing(&client.list()?, json),
        Command::Log { target, json } => print_log(&client.log(&target)?, json),
        Command::Show { target, json } => print_show(&client.show(&target)?, json),
        Command::Diff(args) => return diff_command::run_via_daemon(client, args),
        Command::Push(args) => {
            let local = crate::transfer::http::HttpEndpoint::local(client.clone());
            return transfer_command::run(&local, Direction::Push, args, progress);
        }
        Command::Pull(args) => {
            let local = crate::transfer::http::HttpEndpoint::local(client.clone());
            return transfer_command::run(&local, Direction::Pull, args, progress);
        }
        // `serve`, and any command without an HTTP route, would fail on the catalog lock the
        // daemon holds, so it is rejected with the way out instead.
        other => {
            return Err(Error::DaemonUnsupported {
                command: command_name(&other),
                url: client.url().to_string(),
                pid: daemon.discovery.pid,
                store: root.to_path_buf(),
            })
        }
    }
    Ok(0)
}

/// Returns the subcommand's name as typed (`serve` for `Command::Serve { .. }`), taken from the
/// variant name so commands added later are named without a change here.
fn command_name(command: &Command) -> String {
    let debug = format!("{command:?}");
    let variant: String = debug.chars().take_while(char::is_ascii_alphanumeric).collect();
    variant.to_lowercase()
}

/// Makes a path absolute against the working directory, without resolving symlinks.
fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(|e| Error::io("resolve", path, e))
}

/// Chooses where a checkout goes: a single file checked out to an existing directory goes
/// inside it, and without `--output` the target's name in the working directory.
fn checkout_output(output: Option<PathBuf>, layout: &crate::catalog::Layout, target: &str) -> PathBuf {
    match (output, layout) {
        (Some(dir), crate::catalog::Layout::SingleFile { file_name }) if dir.is_dir() => dir.join(file_name),
        (Some(path), _) => path,
        (None, crate::catalog::Layout::SingleFile { .. }) => PathBuf::from(format!("{target}.safetensors")),
        (None, crate::catalog::Layout::Directory { .. }) => PathBuf::from(target),
    }
}

fn print_base_added(name: &str, report: &BaseReport, json: bool) {
    if json {
        print_json(report);
    } else if report.already_present {
        println!("base {} already stored as {}; added name {:?}, 0 new bytes", name, report.id.short(), name);
    } else {
        println!(
            "added base {} {} ({} tensors): {} original, {} stored, {} new",
            name,
            report.id.short(),
            report.tensors,
            human_bytes(report.original_bytes),
            human_bytes(report.stored_bytes),
            human_bytes(report.new_bytes)
        );
    }
}

fn print_base_list(bases: &[BaseView], json: bool) {
    if json {
        print_json(&bases);
    } else {
        print_bases(bases);
    }
}

fn print_commit(report: &CommitReport, json: bool) {
    if json {
        print_json(report);
        return;
    }
    let label = report.ref_name.clone().unwrap_or_default();
    let kind = if report.lossy.is_some() { "lossy, ultradelta" } else { "lossless" };
    match &report.ref_name {
        Some(_) => println!("committed {label} as {} ({kind})", report.commit),
        None => println!("committed {} ({kind})", report.commit),
    }
    if let Some(map) = &report.name_map {
        println!(
            "  names aligned: fine-tune {:?} + x -> base {:?} + x{}",
            map.finetune_prefix,
            map.base_prefix,
            if map.detected { " (detected)" } else { "" }
        );
    }
    let kinds: Vec<String> = report.tensors_by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!("  tensors: {}", kinds.join(", "));
    println!(
        "  original {}, stored {} (ratio {}), new bytes written {}",
        human_bytes(report.original_bytes),
        human_bytes(report.stored_bytes),
        ratio_text(report.original_bytes, report.stored_bytes),
        human_bytes(report.new_bytes)
    );
    if let Some(lossy) = &report.lossy {
        print_lossy_report(lossy);
    }
}

/// Prints a checkout's result; `is_commit` is false for a base.
fn print_checkout(report: &CheckoutReport, target: &str, is_commit: bool, json: bool) {
    if json {
        print_json(report);
        return;
    }
    let what = match (is_commit, report.lossy) {
        (true, true) => "lossy commit (values are the codec's reconstruction)",
        (true, false) => "commit",
        (false, _) => "base",
    };
    println!("checked out {what} {target} to {} ({})", report.output.display(), human_bytes(report.bytes));
    for (path, hash) in &report.file_hashes {
        println!("  {path}  blake3 {hash}  verified");
    }
}

fn print_listing(listing: &StoreListing, json: bool) {
    if json {
        print_json(listing);
        return;
    }
    print_bases(&listing.bases);
    println!();
    println!("{:<14} {:<20} {:<16} {:<9} {:>11} {:>11} {:>8}", "COMMIT", "REFS", "BASE", "CODEC", "ORIGINAL", "STORED", "RATIO");
    for c in &listing.commits {
        println!(
            "{:<14} {:<20} {:<16} {:<9} {:>11} {:>11} {:>7.2}x",
            c.id.short(),
            c.refs.join(","),
            c.base_names.first().cloned().unwrap_or_else(|| c.base.short()),
            if c.lossy { format!("{}*", c.codec.name) } else { c.codec.name.clone() },
            human_bytes(c.original_bytes),
            human_bytes(c.stored_bytes),
            c.ratio
        );
    }
    if listing.commits.iter().any(|c| c.lossy) {
        println!("* lossy: checkouts return the codec's reconstruction, not the original bytes");
    }
}

fn print_log(entries: &[LogEntry], json: bool) {
    if json {
        print_json(&entries);
        return;
    }
    for entry in entries {
        match entry {
            LogEntry::Commit(c) => {
                let refs = if c.refs.is_empty() { String::new() } else { format!(" ({})", c.refs.join(", ")) };
                println!("commit {}{}", c.id, refs);
                println!("  author {}  date {}", c.author, format_time(c.time));
                println!("  codec {}{}", c.codec.name, if c.lossy { " (lossy)" } else { "" });
                if !c.message.is_empty() {
                    println!("  {}", c.message);
                }
            }
            LogEntry::Base(b) => {
                println!("base {} ({})", b.id, b.names.join(", "));
                println!("  added {}", format_time(b.added_at));
            }
        }
    }
}

fn print_show(details: &Details, json: bool) {
    if json {
        print_json(details);
    } else {
        print_details(details);
    }
}

fn print_lossy_report(r: &crate::store::LossyReport) {
    println!(
        "  ultradelta ({} mode): {} tensors, {} -> {} ({:.1}x; paper-style {:.1}x), {:.2} bits/parameter, sparsity {:.3}",
        r.mode,
        r.tensors,
        human_bytes(r.original_bytes),
        human_bytes(r.object_bytes),
        r.original_bytes as f64 / r.object_bytes.max(1) as f64,
        r.paper_ratio,
        r.bits_per_parameter,
        r.sparsity
    );
    println!(
        "  fidelity: whole-delta relative error {:.3e}, cosine {:.6}; worst tensor {} at {:.3e} (budget {:.1e})",
        r.delta_rel_error,
        r.delta_cosine,
        r.worst_tensor.as_deref().unwrap_or("-"),
        r.max_rel_error,
        r.max_error
    );
    if r.trace_norm_factor != 1.0 {
        println!("  trace-norm factor {:.4} (frozen in the objects)", r.trace_norm_factor);
    }
    if !r.over_budget.is_empty() {
        println!("  {} tensors over budget (stored because of --accept-error)", r.over_budget.len());
    }
}

fn print_bases(bases: &[crate::store::BaseView]) {
    println!("{:<14} {:<24} {:>8} {:>11} {:>11}", "BASE", "NAMES", "TENSORS", "ORIGINAL", "STORED");
    for b in bases {
        println!(
            "{:<14} {:<24} {:>8} {:>11} {:>11}",
            b.id.short(),
            b.names.join(","),
            b.tensors,
            human_bytes(b.original_bytes),
            human_bytes(b.stored_bytes)
        );
    }
}

fn print_details(details: &Details) {
    let (tensors, files) = match details {
        Details::Commit { commit, name_map, files, tensors } => {
            println!("commit {}", commit.id);
            println!("  refs     {}", commit.refs.join(", "));
            println!("  base     {} ({})", commit.base, commit.base_names.join(", "));
            if let Some(parent) = commit.parent {
                println!("  parent   {parent}");
            }
            println!("  author   {}  date {}", commit.author, format_time(commit.time));
            println!("  codec    {}{}", commit.codec.name, if commit.lossy { " (lossy: checkouts return the reconstruction)" } else { " (exact)" });
            if let Some(map) = name_map {
                println!("  names    fine-tune {:?} + x -> base {:?} + x", map.finetune_prefix, map.base_prefix);
            }
            println!(
                "  size     {} original, {} stored, ratio {:.2}x",
                human_bytes(commit.original_bytes),
                human_bytes(commit.stored_bytes),
                commit.ratio
            );
            (tensors, files)
        }
        Details::Base { base, files, tensors } => {
            println!("base {} ({})", base.id, base.names.join(", "));
            println!("  size     {} original, {} stored", human_bytes(base.original_bytes), human_bytes(base.stored_bytes));
            (tensors, files)
        }
    };
    println!();
    for f in files {
        println!("file {}  {}  {}  blake3 {}", f.path, f.kind, human_bytes(f.bytes), f.hash.short());
    }
    println!();
    println!("{:<56} {:<6} {:<18} {:<15} {:>11} {:>11}", "TENSOR", "DTYPE", "SHAPE", "STORAGE", "ORIGINAL", "STORED");
    for t in tensors {
        let shape = format!("{:?}", t.shape);
        println!(
            "{:<56} {:<6} {:<18} {:<15} {:>11} {:>11}",
            t.name,
            t.dtype,
            shape,
            t.storage,
            human_bytes(t.original_bytes),
            human_bytes(t.stored_bytes)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_defaults_match_clap() {
        let cli = Cli::try_parse_from(["wstore", "commit", "x", "--base", "b"]).unwrap();
        let Command::Commit { codec, .. } = cli.command else { panic!("parsed {:?}", cli.command) };
        let parsed = serde_json::to_value(&codec).unwrap();
        let default = serde_json::to_value(CodecArgs::default()).unwrap();
        assert_eq!(parsed, default);
    }

    #[test]
    fn arguments_do_not_clash() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn command_names_are_subcommands() {
        let cli = Cli::try_parse_from(["wstore", "serve"]).unwrap();
        assert_eq!(command_name(&cli.command), "serve");
        let cli = Cli::try_parse_from(["wstore", "ls"]).unwrap();
        assert_eq!(command_name(&cli.command), "ls");
    }

    #[test]
    fn bytes_are_humanised() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(13_476_839_424), "12.6 GiB");
    }

    #[test]
    fn times_format_as_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_796_342_400), "2026-12-04 00:00:00 UTC");
        assert_eq!(format_time(1_796_342_400 + 86_399), "2026-12-04 23:59:59 UTC");
    }
}
