//! A real single-node Garage S3 server for integration tests.
//!
//! The binary comes from `WSTORE_GARAGE`, else `garage` on PATH. Without it the S3 tests print
//! a skip line and pass, unless `WSTORE_REQUIRE_S3=1` (set by CI), which makes that a failure.
//! One server serves every test of a test binary. It starts on first use on free loopback
//! ports in a temp dir. A watchdog process stops it and removes the dir once the test binary
//! exits, because statics are never dropped and so `Drop` cannot do it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Time Garage gets to start, that is to pass `garage status` and accept the layout and bucket.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Region name the server is configured with.
pub const REGION: &str = "garage";

/// A running Garage with one access key that may read and write every bucket it creates.
#[derive(Debug)]
pub struct Garage {
    binary: PathBuf,
    config: PathBuf,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    /// A bucket created at start for tests that need one.
    pub bucket: String,
}

/// The shared server, or `None` when the binary is missing and S3 tests are not required.
pub fn garage() -> Option<&'static Garage> {
    static SERVER: OnceLock<Option<Garage>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        let Some(binary) = find_binary() else {
            if std::env::var("WSTORE_REQUIRE_S3").as_deref() == Ok("1") {
                panic!("WSTORE_REQUIRE_S3=1 but no garage binary: set WSTORE_GARAGE or put garage on PATH");
            }
            return None;
        };
        Some(Garage::start(binary))
    });
    if server.is_none() {
        eprintln!("skipping S3 test: no garage binary (set WSTORE_GARAGE or put garage on PATH)");
    }
    server.as_ref()
}

fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WSTORE_GARAGE") {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("garage"))
        .find(|path| path.is_file())
}

/// A free loopback port (the listener is closed again, so a race is possible but rare).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

impl Garage {
    fn start(binary: PathBuf) -> Garage {
        let dir = tempfile::Builder::new().prefix("wstore-garage-").tempdir().unwrap().keep();
        let (s3_port, rpc_port, admin_port) = (free_port(), free_port(), free_port());
        let config = dir.join("garage.toml");
        let text = format!(
            "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{secret}\"\n\n\
             [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\nroot_domain = \".s3.localhost\"\n\n\
             [admin]\napi_bind_addr = \"127.0.0.1:{admin_port}\"\nadmin_token = \"{token}\"\n",
            meta = dir.join("meta").display(),
            data = dir.join("data").display(),
            secret = random_hex(32),
            token = random_hex(16),
        );
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        // Never waited for: the server lives as long as this test process; `watch` ends it.
        #[allow(clippy::zombie_processes)]
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        watch(child.id(), &dir);
        let garage = Garage {
            binary,
            config,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            access_key: format!("GK{}", random_hex(12)),
            secret_key: random_hex(32),
            bucket: "wstore-test".to_string(),
        };
        garage.set_up(&dir);
        garage
    }

    /// Waits for the node, assigns the layout, imports the key and creates the test bucket.
    fn set_up(&self, dir: &Path) {
        let started = Instant::now();
        while !self.cli(&["status"]).status.success() {
            assert!(started.elapsed() < START_TIMEOUT, "garage did not start; see {}", dir.join("server.log").display());
            std::thread::sleep(Duration::from_millis(100));
        }
        let node = self.run(&["node", "id", "-q"]);
        let node_id = node.split('@').next().unwrap().trim().to_string();
        self.run(&["layout", "assign", "-z", "dc1", "-c", "1G", &node_id]);
        self.run(&["layout", "apply", "--version", "1"]);
        self.run(&["key", "import", "--yes", "-n", "wstore-test", &self.access_key, &self.secret_key]);
        self.create_bucket(&self.bucket);
    }

    /// Creates a bucket the test key may read and write.
    pub fn create_bucket(&self, name: &str) {
        // Right after the layout is applied the bucket table may not take writes yet.
        let started = Instant::now();
        loop {
            let output = self.cli(&["bucket", "create", name]);
            if output.status.success() {
                break;
            }
            assert!(started.elapsed() < START_TIMEOUT, "garage bucket create {name}: {}", String::from_utf8_lossy(&output.stderr));
            std::thread::sleep(Duration::from_millis(200));
        }
        self.run(&["bucket", "allow", "--read", "--write", "--owner", name, "--key", &self.access_key]);
    }

    /// Environment that points wstore at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// The library's credentials for this server.
    pub fn credentials(&self) -> wstore::storage::s3::S3Credentials {
        wstore::storage::s3::S3Credentials {
            access_key_id: self.access_key.clone(),
            secret_access_key: self.secret_key.clone(),
            region: REGION.to_string(),
            endpoint: Some(self.endpoint.clone()),
            allow_http: true,
        }
    }

    /// An `s3://` URL under a prefix no other test uses.
    pub fn fresh_url(&self, label: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!("s3://{}/{label}-{}-{}", self.bucket, std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.binary).arg("-c").arg(&self.config).args(args).env("RUST_LOG", "warn").output().unwrap()
    }

    /// Runs a garage CLI command that must succeed and returns its stdout.
    fn run(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(output.status.success(), "garage {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }
}

/// Starts a watchdog that kills the server and removes its dir once this test process exits.
/// The watchdog outlives this process by design, so nothing waits for it.
#[allow(clippy::zombie_processes)]
fn watch(server_pid: u32, dir: &Path) {
    let script = format!(
        "while kill -0 {parent} 2>/dev/null; do sleep 0.2; done; kill {server_pid}; sleep 1; kill -9 {server_pid} 2>/dev/null; rm -rf '{dir}'",
        parent = std::process::id(),
        dir = dir.display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
}
