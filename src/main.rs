use clap::Parser;

fn main() {
    restore_default_sigpipe();
    let cli = wstore::cli::Cli::parse();
    // The daemon logs its start, stop and request errors at info and above by default.
    let serving = matches!(cli.command, wstore::cli::Command::Serve { .. });
    let level = match (cli.verbose, serving) {
        (true, _) => "wstore=debug",
        (false, true) => "wstore=info",
        (false, false) => "wstore=warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WSTORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let code = match wstore::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("wstore: {error}");
            2
        }
    };
    std::process::exit(code);
}

/// Lets a closed stdout end the process quietly, as `cat` and `grep` do, so that
/// `wstore ls | head -1` does not panic. Rust ignores SIGPIPE by default.
fn restore_default_sigpipe() {
    // SAFETY: called first thing in main, before any thread starts; resetting a signal's
    // disposition to its default is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
