use clap::Parser;

fn main() {
    let cli = wstore::cli::Cli::parse();
    let level = if cli.verbose { "wstore=debug" } else { "wstore=warn" };
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
