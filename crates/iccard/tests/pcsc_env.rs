//! What every PC/SC test stands on: pcscd with the vpcd reader in the `iccard` network namespace
//! (set up by `scripts/pcsc-netns up`, started from here when it is not yet running), one test
//! at a time across processes (a file lock), cards served by `iccard card serve` inside the
//! namespace, and the outside clients run against pcscd's Unix socket.
//!
//! Nothing here skips: a missing package, a missing root right or a pcscd that cannot start
//! fails the test with what to do about it.

use iccard_link::list_readers;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// vpcd slot 0, where the tests put the user card.
pub const CARD_READER: &str = "Virtual PCD 00 00";
/// vpcd slot 1, where the tests put the PSAM.
pub const SAM_READER: &str = "Virtual PCD 00 01";
/// The network namespace `scripts/pcsc-netns` makes.
pub const NETNS: &str = "iccard";

static IN_PROCESS: Mutex<()> = Mutex::new(());

/// The PC/SC test bench, held exclusively while alive.
pub struct Pcsc {
    _file_lock: File,
    _guard: MutexGuard<'static, ()>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `ip` from iproute2, which Debian installs in /usr/sbin (not on every user's PATH).
pub fn ip() -> Command {
    let sbin = Path::new("/usr/sbin/ip");
    Command::new(if sbin.is_file() {
        sbin
    } else {
        Path::new("ip")
    })
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Takes the bench: checks the tools, brings pcscd up in the namespace, waits until slot 0 is
/// free. Panics with the reason when any of it is impossible.
pub fn pcsc() -> Pcsc {
    let guard = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let lock_path = std::env::temp_dir().join("iccard-pcsc-tests.lock");
    let file_lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open the lock file {}: {e}", lock_path.display()));
    file_lock
        .lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));

    let needed = [
        ("pcscd", "pcscd"),
        ("ip", "iproute2"),
        ("opensc-tool", "opensc"),
        ("opensc-explorer", "opensc"),
        ("scriptor", "pcsc-tools"),
        ("pcsc_scan", "pcsc-tools"),
    ];
    let mut missing: Vec<&str> = needed
        .iter()
        .filter(|(bin, _)| !on_path(bin) && !Path::new("/usr/sbin").join(bin).is_file())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !Path::new("/usr/lib/pcsc/drivers/serial/libifdvpcd.so").exists() {
        missing.push("vsmartcard-vpcd");
    }
    missing.dedup();
    assert!(
        missing.is_empty(),
        "the PC/SC tests need these Debian packages: {missing:?} \
         (apt-get install -y pcscd vsmartcard-vpcd opensc pcsc-tools iproute2; .ci/run does it)"
    );

    let script = repo_root().join("scripts/pcsc-netns");
    let up = Command::new("bash")
        .arg(&script)
        .arg("up")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        up.status.success(),
        "the PC/SC tests need pcscd with vpcd in network namespace {NETNS:?}, and \
         `scripts/pcsc-netns up` failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let readers = list_readers().unwrap_or_else(|e| panic!("pcscd is up but: {e}"));
    assert!(
        readers.iter().any(|r| r.name == CARD_READER),
        "pcscd has no reader {CARD_READER:?} (vpcd's slot 0); it has {readers:?}"
    );
    let bench = Pcsc {
        _file_lock: file_lock,
        _guard: guard,
    };
    // A card left by a test that crashed goes away when its process is gone.
    wait_for(CARD_READER, false, Duration::from_secs(5)).unwrap_or_else(|| {
        panic!("a card stays in {CARD_READER:?}: is another `iccard card serve` running?")
    });
    bench
}

/// Waits until `reader` has a card (`present`) or has none; returns the ATR seen (empty when
/// waiting for absence), or None on timeout.
pub fn wait_for(reader: &str, present: bool, timeout: Duration) -> Option<Vec<u8>> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(readers) = list_readers() {
            let atr = readers
                .iter()
                .find(|r| r.name == reader)
                .and_then(|r| r.atr.clone());
            match (present, atr) {
                (true, Some(a)) => return Some(a),
                (false, None) => return Some(Vec::new()),
                _ => {}
            }
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The iccard binary under test.
pub fn iccard_bin() -> &'static str {
    env!("CARGO_BIN_EXE_iccard")
}

/// Runs `iccard ARGS` outside the namespace.
pub fn iccard(args: &[&str]) -> Output {
    Command::new(iccard_bin())
        .args(args)
        .output()
        .expect("the iccard binary runs")
}

/// Runs `iccard ARGS` outside the namespace in directory `dir`.
pub fn iccard_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(iccard_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the iccard binary runs")
}

/// Runs `iccard ARGS`, which must succeed; returns stdout.
pub fn iccard_ok(args: &[&str]) -> String {
    let out = iccard(args);
    assert!(
        out.status.success(),
        "iccard {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs a client program, which must succeed; returns stdout and stderr together.
pub fn client(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// A blank card made and personalized with the development keys by the binary.
pub fn personalized_card(dir: &Path, name: &str, card_number: &str) -> PathBuf {
    let image = dir.join(name);
    let path = image.to_str().expect("UTF-8 path");
    iccard_ok(&[
        "card",
        "new",
        "--out",
        path,
        "--chip-serial",
        "0102030405060708",
    ]);
    iccard_ok(&[
        "card",
        "personalize",
        "--image",
        path,
        "--dev-keys",
        "--card-number",
        card_number,
        "--pin",
        "123456",
    ]);
    image
}

/// `iccard card serve` running inside the namespace.
pub struct Served {
    child: Option<Child>,
    log: PathBuf,
    readers: Vec<&'static str>,
}

impl Served {
    /// Serves `images` on slots 0, 1, ... with `extra` options, and waits until pcscd sees
    /// every card.
    pub fn start(images: &[&Path], extra: &[&str], log: PathBuf) -> Served {
        Self::start_at(0, images, extra, log)
    }

    /// Serves `images` on slots `first`, `first` + 1, ... (at most slot 1).
    pub fn start_at(first: usize, images: &[&Path], extra: &[&str], log: PathBuf) -> Served {
        let mut cmd = ip();
        cmd.args(["netns", "exec", NETNS, iccard_bin(), "card", "serve"]);
        cmd.args(["--slot", &first.to_string()]);
        for i in images {
            cmd.arg("--image").arg(i);
        }
        cmd.args(extra).arg("--verbose");
        let log_file = File::create(&log).expect("serve log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("ip netns exec iccard card serve starts");
        let readers: Vec<&'static str> =
            [CARD_READER, SAM_READER][first..first + images.len()].to_vec();
        let mut served = Served {
            child: Some(child),
            log,
            readers,
        };
        for r in served.readers.clone() {
            if wait_for(r, true, Duration::from_secs(10)).is_none() {
                panic!(
                    "the served card did not appear in {r:?} within 10 s; serve log:\n{}",
                    served.log_text()
                );
            }
            let _ = served.child.as_mut().map(|c| c.try_wait());
        }
        served
    }

    /// The serve process's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id (as `ip netns exec` execs the program, the serve process itself).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits up to `timeout` for the process to end by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.wait_cards_gone();
                if !status.success() {
                    // A card process that died under a client (killed on cue) leaves pcscd one
                    // more power-off for the slot about half a second later; a card served in
                    // that time would take it as its first message and never be seen. Let it
                    // pass before anything is served again.
                    std::thread::sleep(Duration::from_millis(1_500));
                }
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. "TERM") and waits for the process to end.
    pub fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        let pid = self.pid().to_string();
        let st = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill runs");
        assert!(st.success(), "kill -{signal} {pid} failed");
        self.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| {
            panic!(
                "serve did not exit within 10 s of SIG{signal}; log:\n{}",
                self.log_text()
            )
        })
    }

    fn wait_cards_gone(&self) {
        for r in &self.readers {
            assert!(
                wait_for(r, false, Duration::from_secs(10)).is_some(),
                "the card stayed in {r:?} after its serve process ended"
            );
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            for r in &self.readers {
                let _ = wait_for(r, false, Duration::from_secs(10));
            }
        }
    }
}
