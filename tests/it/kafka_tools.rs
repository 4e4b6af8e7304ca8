//! The real Kafka clients the Kafka tests run: kafka-python and confluent-kafka in a
//! virtualenv (`target/kafka-clients`, from tests/kafka/requirements.txt), and kcat.
//! `.ci/run` installs them; where they are missing the tests install them (the first
//! test to need them, under a lock), so `cargo test` works on a fresh machine too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv's python, with the pinned clients installed.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = std::env::var_os("SPATE_KAFKA_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| repository().join("target/kafka-clients"));
        let python = venv.join("bin/python");
        let requirements = repository().join("tests/kafka/requirements.txt");
        let marker = venv.join("installed-requirements.txt");
        let wanted = std::fs::read_to_string(&requirements).expect("requirements");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
            return python;
        }
        // One installer at a time (tests run in parallel): a lock file beside the venv.
        std::fs::create_dir_all(venv.parent().expect("a parent")).unwrap();
        let lock = std::fs::File::create(venv.with_extension("lock")).unwrap();
        // SAFETY: flock on a descriptor we own; it is released when `lock` is dropped.
        assert_eq!(
            unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
            0
        );
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
            run_ok(Command::new("python3").arg("-m").arg("venv").arg(&venv));
            run_ok(
                Command::new(&python)
                    .args(["-m", "pip", "install", "--quiet", "-r"])
                    .arg(&requirements),
            );
            std::fs::write(&marker, &wanted).unwrap();
        }
        python
    })
}

/// kcat (from Debian's package), installed with apt-get where it is missing and we may.
pub fn kcat() -> &'static str {
    static KCAT: OnceLock<()> = OnceLock::new();
    KCAT.get_or_init(|| {
        if Command::new("kcat").arg("-V").output().is_ok() {
            return;
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "kcat is not installed: `apt-get install kcat` (.ci/run does it), then run the tests again"
        );
        run_ok(Command::new("apt-get").args(["install", "-y", "-qq", "kcat"]));
    });
    "kcat"
}

fn run_ok(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A script of tests/kafka run with the virtualenv's python, killed if it outlives
/// `limit`; its output whatever happened.
pub fn python_script(script: &str, args: &[&str], limit: Duration) -> Output {
    let mut command = Command::new(python());
    command
        .arg("-u")
        .arg(repository().join("tests/kafka").join(script))
        .args(args);
    run_for(&mut command, limit)
}

/// Runs `command` to its end, or kills it after `limit`.
pub fn run_for(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{command:?}: {error}"));
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

/// The JSON object a scenario of tests/kafka/clients.py printed last.
pub fn scenario(args: &[&str], limit: Duration) -> serde_json::Value {
    let output = python_script("clients.py", args, limit);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|error| {
        panic!(
            "clients.py {args:?} gave no result ({error}; {}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
