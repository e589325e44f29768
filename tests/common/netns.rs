//! Network namespaces for the tests that run on a network of their own
//! (`tests/netns_loss.rs`, `tests/link_emulator.rs`) and for the link emulator's examples.
//!
//! They need root and the `ip` (iproute2) and `nft` (nftables) commands. A test that cannot
//! have them fails with one line saying why ([`require`]), unless `P2PCHAT_SKIP_NETNS=1` is
//! set, in which case it says it was skipped and passes ([`skipped`]). A [`Netns`] is
//! deleted when dropped, whether the test passed or failed; traffic never leaves the
//! namespaces a test created.
//!
//! Shared by file: the tests reach it as `common::netns`, the examples through
//! `examples/link_common/mod.rs`. It uses nothing but std and libc.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Finds a command on PATH, or in the sbin directories that a non-login PATH may lack.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2)) // the effective uid
            .is_some_and(|uid| uid == "0")
    })
}

/// Runs `program args` (with `input` on stdin), returning its stdout, or its stderr as the
/// error.
pub fn run(program: &Path, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let what = format!("{} {}", program.display(), args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().ok_or("no stdin pipe")?;
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("cannot write to {what}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// True (after saying so on stderr) when `P2PCHAT_SKIP_NETNS=1` asks to skip the tests that
/// need namespaces; `test` names the one asking.
pub fn skipped(test: &str) -> bool {
    if std::env::var("P2PCHAT_SKIP_NETNS").is_ok_and(|v| v == "1") {
        // Straight to stderr, past the test harness's capture, so that it shows.
        let _ = writeln!(std::io::stderr(), "{test}: skipped (P2PCHAT_SKIP_NETNS=1)");
        return true;
    }
    false
}

/// The value, or the test's one-line failure saying why it cannot run and what to do.
pub fn require<T>(test: &str, setup: Result<T, String>) -> T {
    setup.unwrap_or_else(|e| {
        panic!("{test} cannot run: {e}; run it as root with iproute2 and nftables installed, or set P2PCHAT_SKIP_NETNS=1 to skip it")
    })
}

/// The commands a namespace needs, found, and root checked.
#[derive(Debug, Clone)]
pub struct Tools {
    pub ip: PathBuf,
    pub nft: PathBuf,
}

impl Tools {
    pub fn find() -> Result<Tools, String> {
        if !is_root() {
            return Err("not root (network namespaces and nftables need root)".into());
        }
        Ok(Tools {
            ip: find_tool("ip").ok_or("the `ip` command (iproute2) is missing")?,
            nft: find_tool("nft").ok_or("the `nft` command (nftables) is missing")?,
        })
    }
}

/// A network namespace of our own, with its loopback up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    tools: Tools,
}

impl Netns {
    /// Creates the namespace `name` (`ip netns add`: a file under /run/netns). The name must
    /// be unique among the tests that run at once: put the process id in it.
    pub fn create(name: &str) -> Result<Netns, String> {
        let tools = Tools::find()?;
        run(&tools.ip, &["netns", "add", name], None)?;
        // From here on, the drop deletes it, whatever fails next.
        let ns = Netns {
            name: name.to_string(),
            tools,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The prefix that runs a command inside the namespace (`ip` execs it, so the child's
    /// pid is the command's own).
    pub fn prefix(&self) -> [&str; 4] {
        let ip = self.tools.ip.to_str().expect("a UTF-8 path");
        [ip, "netns", "exec", &self.name]
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run(&self.tools.ip, &all, None)
    }

    /// `nft ARGS` inside the namespace, with `input` on its stdin (`nft -f -`).
    pub fn nft(&self, args: &[&str], input: Option<&str>) -> Result<String, String> {
        let nft = self
            .tools
            .nft
            .to_str()
            .ok_or("the path of nft is not UTF-8")?;
        let mut all = vec!["netns", "exec", &self.name, nft];
        all.extend_from_slice(args);
        run(&self.tools.ip, &all, input)
    }

    /// Sets a sysctl of the namespace's network stack: `key` is its path under
    /// /proc/sys/net (`ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), String> {
        let path = Path::new("/proc/sys/net").join(key);
        in_netns(&self.name, || std::fs::write(&path, value))
            .map_err(|e| format!("cannot set {} in {}: {e}", path.display(), self.name))
    }

    /// A UDP socket bound to `addr` in this namespace, with an 8 MiB receive buffer (root
    /// may exceed `net.core.rmem_max`), so that a receiving thread that is not scheduled for
    /// a while (a shared machine) loses nothing: what a test counts is what arrived.
    pub fn bind_udp(&self, addr: std::net::SocketAddrV4) -> Result<std::net::UdpSocket, String> {
        use std::os::fd::AsRawFd;
        let socket = self
            .enter(|| std::net::UdpSocket::bind(addr))
            .map_err(|e| format!("cannot bind {addr} in {}: {e}", self.name))?;
        let size: libc::c_int = 8 << 20;
        // SAFETY: setsockopt reads an int that lives for the call, on an open socket.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("cannot enlarge the receive buffer of {addr}: {e}"));
        }
        Ok(socket)
    }

    /// Runs `f` on a thread that has entered this namespace (see [`in_netns`]).
    pub fn enter<T: Send>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send,
    ) -> std::io::Result<T> {
        in_netns(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(&self.tools.ip, &["netns", "delete", &self.name], None) {
            eprintln!("could not delete the network namespace {}: {e}", self.name);
        }
    }
}

/// Runs `f` on a short-lived thread that has entered the network namespace `name` (one of
/// `ip netns`'s, under /run/netns), and returns what it returns. What `f` opens there (a
/// socket, a TUN device) stays in that namespace when the thread ends; the calling thread,
/// and the rest of the process, never change namespace.
pub fn in_netns<T: Send>(
    name: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    let path = Path::new("/run/netns").join(name);
    let ns = std::fs::File::open(&path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns takes a file descriptor (open for the scope of the call) and a
                // namespace type; it changes only the calling thread's network namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}
