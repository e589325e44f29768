//! A real coturn `turnserver` in a network namespace of the NAT lab, run from the README's
//! coturn configuration (the block between `<!-- coturn.conf -->` and
//! `<!-- /coturn.conf -->` in README.md), so that the configuration the README gives
//! operators is the one the tests run.
//!
//! The test substitutes the README's placeholders (the public address `203.0.113.5` and
//! the secret `CHANGE-ME`) and appends only where coturn keeps its files (database, pid
//! file, log) in a temporary directory of its own, so that tests running at once do not
//! share them. No system service, no TLS, no CLI. The log is kept to be shown when a test
//! fails ([`Coturn::log`]).
//!
//! `P2PCHAT_SKIP_TURN=1` skips the tests that need it ([`skipped`]); without coturn
//! installed they fail with one line saying so (`.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::{self, Netns};
use super::TempDir;

/// The README's placeholder for the TURN server's public address.
pub const README_ADDRESS: &str = "203.0.113.5";
/// The README's placeholder for the shared secret.
pub const README_SECRET: &str = "CHANGE-ME";
/// The port the README's configuration listens on.
pub const PORT: u16 = 3478;

/// True (after saying so) when `P2PCHAT_SKIP_TURN=1` asks to skip the tests that need
/// coturn.
pub fn skipped(test: &str) -> bool {
    if std::env::var("P2PCHAT_SKIP_TURN").is_ok_and(|v| v == "1") {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{test}: skipped (P2PCHAT_SKIP_TURN=1)");
        return true;
    }
    false
}

/// The coturn configuration block of README.md: the lines of the code block between the
/// markers.
pub fn readme_config() -> Result<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (_, rest) = readme
        .split_once("<!-- coturn.conf -->")
        .ok_or("README.md has no <!-- coturn.conf --> marker")?;
    let (block, _) = rest
        .split_once("<!-- /coturn.conf -->")
        .ok_or("README.md has no <!-- /coturn.conf --> marker")?;
    let block = block.trim();
    let body = block
        .strip_prefix("```")
        .and_then(|b| b.strip_suffix("```"))
        .ok_or("the coturn.conf markers of README.md must hold one ``` code block")?;
    // The fence's first line may name a language.
    let body = body.split_once('\n').map_or("", |(_, b)| b);
    Ok(body.to_string())
}

/// The README's configuration for a TURN server at `ip` with `secret`, its files in `dir`.
pub fn config_for(ip: &str, secret: &str, dir: &Path) -> Result<String, String> {
    let readme = readme_config()?;
    for placeholder in [README_ADDRESS, README_SECRET] {
        if !readme.contains(placeholder) {
            return Err(format!(
                "README.md's coturn.conf block lacks the placeholder {placeholder}"
            ));
        }
    }
    let mut conf = readme
        .replace(README_ADDRESS, ip)
        .replace(README_SECRET, secret);
    conf.push_str(&format!(
        "\n# added by the test: its own files\nuserdb={}\npidfile={}\nlog-file={}\nsimple-log\n",
        dir.join("turndb").display(),
        dir.join("turnserver.pid").display(),
        dir.join("turn.log").display(),
    ));
    Ok(conf)
}

/// A `turnserver` running in a namespace; killed (and its files removed) on drop.
pub struct Coturn {
    child: Option<Child>,
    /// `IP:3478`.
    pub addr: std::net::SocketAddr,
    pub dir: TempDir,
    /// The configuration it was started with.
    pub config: String,
}

impl Coturn {
    /// Starts coturn in `ns` at `ip` (an address of `ns`) with `secret`, from the README's
    /// configuration, and returns once it answers a STUN Binding request (within 5 s).
    pub fn start_in(ns: &Netns, ip: &str, secret: &str) -> Result<Coturn, String> {
        let program = netns::find_tool("turnserver")
            .ok_or("turnserver (coturn) is not installed: apt-get install coturn, or set P2PCHAT_SKIP_TURN=1")?;
        let dir = TempDir::new("coturn");
        let config = config_for(ip, secret, dir.path())?;
        let conf = dir.path().join("turnserver.conf");
        std::fs::write(&conf, &config).map_err(|e| format!("cannot write {conf:?}: {e}"))?;
        let out = std::fs::File::create(dir.path().join("stdout"))
            .map_err(|e| format!("cannot create coturn's stdout file: {e}"))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(ns.prefix()[0]);
        command.args(&ns.prefix()[1..]);
        let child = command
            .arg(&program)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start turnserver: {e}"))?;
        let addr = format!("{ip}:{PORT}")
            .parse()
            .map_err(|e| format!("{ip}: {e}"))?;
        let mut coturn = Coturn {
            child: Some(child),
            addr,
            dir,
            config,
        };
        coturn.wait_ready(ns, ip)?;
        // coturn goes on past a configuration line it does not understand, or an address
        // it cannot use (it then listens on every address): the README's block must give
        // none of those.
        let complaints: Vec<String> = coturn
            .log()
            .lines()
            .filter(|l| l.contains("Bad configuration") || l.contains("ERROR"))
            .map(str::to_string)
            .collect();
        if !complaints.is_empty() {
            return Err(format!(
                "turnserver complained about the README's configuration: {complaints:#?}"
            ));
        }
        Ok(coturn)
    }

    /// Waits until a STUN Binding request from `ns` is answered.
    fn wait_ready(&mut self, ns: &Netns, ip: &str) -> Result<(), String> {
        let probe = ns.bind_udp(format!("{ip}:0").parse().map_err(|e| format!("{e}"))?)?;
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let binding = [
            0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        let mut buf = [0u8; 1500];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "turnserver exited ({status}); its log:\n{}",
                    self.log()
                ));
            }
            let _ = probe.send_to(&binding, self.addr);
            if probe.recv_from(&mut buf).is_ok() {
                return Ok(());
            }
        }
        Err(format!(
            "turnserver did not answer within 5 s; its log:\n{}",
            self.log()
        ))
    }

    /// Kills coturn (SIGKILL: it says goodbye to nobody) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// coturn's log file and its stdout/stderr, for failure messages.
    pub fn log(&self) -> String {
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "{}{}",
            read(self.dir.path().join("turn.log")),
            read(self.dir.path().join("stdout"))
        )
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("coturn's log ({}):\n{}", self.addr, self.log());
        }
    }
}
