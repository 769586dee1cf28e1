//! Runs real Envoy for tests: in Docker (`--network host`) or as a native
//! process, from a config template.
//!
//! Every port is 0 in the templates: Envoy picks free ports itself, writes the
//! admin address to `--admin-address-path`, and the listeners' addresses are
//! read back from the admin `/listeners` endpoint. No port is ever guessed, so
//! tests can run in parallel.
//!
//! Clean-up is tied to [`Envoy`]'s `Drop`: the process is killed, the
//! container removed (also when a test panics). Native processes also get
//! `PR_SET_PDEATHSIG`, so a killed test binary takes Envoy with it; containers
//! carry the label [`CONTAINER_LABEL`] for a final sweep by `make test`.

use crate::paths;
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Label on every container the harness starts.
pub const CONTAINER_LABEL: &str = "org.switchyard.harness";
/// Where wasm modules are mounted inside the container, and the prefix the
/// ready-made snippets in `envoy-configs/` use.
pub const CONTAINER_WASM_DIR: &str = "/etc/switchyard/wasm";

/// How Envoy is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// `docker run --network host <image>`.
    Docker { image: String },
    /// The Envoy binary as a child process.
    Native { binary: PathBuf },
}

impl Runtime {
    /// `SWITCHYARD_ENVOY_RUNTIME=docker|native`; unset means Docker when a
    /// daemon answers and the set-up recorded an image, else native.
    pub fn from_env() -> Result<Runtime> {
        match std::env::var("SWITCHYARD_ENVOY_RUNTIME").as_deref() {
            Ok("docker") => Runtime::docker(),
            Ok("native") => Runtime::native(),
            Ok(other) => bail!("SWITCHYARD_ENVOY_RUNTIME must be docker or native, not {other:?}"),
            Err(_) => Runtime::docker().or_else(|_| Runtime::native()),
        }
    }

    /// Docker with `SWITCHYARD_ENVOY_IMAGE` when that image is present, else
    /// the image `scripts/setup-docker.sh` built or chose.
    pub fn docker() -> Result<Runtime> {
        if !docker_answers() {
            bail!(
                "no Docker daemon answers (`docker info` failed); scripts/setup-docker.sh starts one"
            );
        }
        if let Ok(image) = std::env::var("SWITCHYARD_ENVOY_IMAGE")
            && docker_image_present(&image)
        {
            return Ok(Runtime::Docker { image });
        }
        let image = paths::setup_record("envoy-image")?;
        if !docker_image_present(&image) {
            bail!(
                "image {image} recorded in build/envoy-image is gone; rerun scripts/setup-docker.sh"
            );
        }
        Ok(Runtime::Docker { image })
    }

    /// The binary from `SWITCHYARD_ENVOY_BINARY`, else the one the set-up
    /// installed (`build/envoy-path`), else `envoy` on the `PATH` (an
    /// installed harness outside a checkout, e.g. in a user's CI).
    pub fn native() -> Result<Runtime> {
        let binary = envoy_binary(
            std::env::var_os("SWITCHYARD_ENVOY_BINARY").map(PathBuf::from),
            paths::setup_record("envoy-path").map(PathBuf::from),
            std::env::var_os("PATH"),
        )?;
        if !binary.is_file() {
            bail!("no Envoy binary at {}", binary.display());
        }
        Ok(Runtime::Native { binary })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Runtime::Docker { .. } => "docker",
            Runtime::Native { .. } => "native",
        }
    }

    /// The version of the Envoy this runtime runs (`1.36.4`), from the binary
    /// or image itself (`envoy --version`), not from the set-up record: a
    /// run with `SWITCHYARD_ENVOY_BINARY` or another image names what ran.
    /// `"?"` when it cannot be read.
    pub fn envoy_version(&self) -> String {
        let out = match self {
            Runtime::Native { binary } => {
                std::process::Command::new(binary).arg("--version").output()
            }
            Runtime::Docker { image } => std::process::Command::new("docker")
                .args(["run", "--rm", image, "--version"])
                .output(),
        };
        out.ok()
            .and_then(|o| version_of(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or_else(|| "?".into())
    }

    /// The wasm directory as Envoy sees it.
    fn wasm_dir(&self) -> PathBuf {
        match self {
            Runtime::Docker { .. } => PathBuf::from(CONTAINER_WASM_DIR),
            Runtime::Native { .. } => paths::wasm_dir(),
        }
    }
}

/// The release in `envoy --version` output (`.../1.36.4/Clean/RELEASE/...`).
fn version_of(text: &str) -> Option<String> {
    text.split('/')
        .find(|part| {
            let mut it = part.split('.');
            part.split('.').count() == 3
                && it.all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
}

fn docker_answers() -> bool {
    std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn docker_image_present(image: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Why Envoy did not come up. The message carries Envoy's own words.
/// How long [`Envoy::stats`] waits for wasm counters to be flushed: the
/// SDK's flush period (250 ms) plus a tick's slack.
pub const STATS_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_millis(350);

#[derive(Debug)]
pub struct EnvoyError {
    pub summary: String,
    /// The tail of Envoy's log (its error lines are there).
    pub log: String,
}

impl fmt::Display for EnvoyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n--- envoy log (tail) ---\n{}",
            self.summary, self.log
        )
    }
}

impl std::error::Error for EnvoyError {}

/// Which Envoy binary the native runtime runs: `explicit`, else the
/// set-up record, else `envoy` in a `PATH` directory; the record's error
/// when none is found.
fn envoy_binary(
    explicit: Option<PathBuf>,
    recorded: Result<PathBuf>,
    path: Option<std::ffi::OsString>,
) -> Result<PathBuf> {
    if let Some(b) = explicit {
        return Ok(b);
    }
    match recorded {
        Ok(p) => Ok(p),
        Err(e) => path
            .and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join("envoy"))
                    .find(|c| c.is_file())
            })
            .ok_or(e),
    }
}

/// Builds and starts an [`Envoy`].
///
/// The template is a full envoy.yaml rendered with minijinja (undefined
/// variables are errors). Always-present variables: `wasm_dir` (where the
/// modules are, as Envoy sees it) and `run_dir` (a scratch directory shared
/// with Envoy). Use `port_value: 0` for the admin and every listener.
pub struct EnvoyBuilder {
    runtime: Runtime,
    template: String,
    vars: BTreeMap<String, serde_json::Value>,
    concurrency: u32,
    log_level: String,
    component_log_level: Option<String>,
    startup_timeout: Duration,
    keep_failed_runs: bool,
    cpus: Option<Vec<usize>>,
    partials: BTreeMap<String, String>,
    files: BTreeMap<String, String>,
    copies: BTreeMap<String, PathBuf>,
    wrapper: Vec<String>,
}

impl EnvoyBuilder {
    pub fn new(runtime: Runtime, template: impl Into<String>) -> Self {
        EnvoyBuilder {
            runtime,
            template: template.into(),
            vars: BTreeMap::new(),
            concurrency: 1,
            log_level: "info".into(),
            component_log_level: None,
            startup_timeout: Duration::from_secs(60),
            keep_failed_runs: true,
            wrapper: Vec::new(),
            cpus: None,
            partials: BTreeMap::new(),
            files: BTreeMap::new(),
            copies: BTreeMap::new(),
        }
    }

    pub fn from_file(runtime: Runtime, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let template = std::fs::read_to_string(path)
            .with_context(|| format!("reading Envoy template {}", path.display()))?;
        Ok(EnvoyBuilder::new(runtime, template))
    }

    /// A template variable (anything serde can serialise).
    pub fn var(mut self, name: &str, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.vars.insert(name.to_string(), value);
        self
    }

    /// Worker threads (`--concurrency`).
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    /// `-l`; e.g. "debug".
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// `--component-log-level`, e.g. "wasm:debug".
    pub fn component_log_level(mut self, spec: &str) -> Self {
        self.component_log_level = Some(spec.to_string());
        self
    }

    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// A named template fragment the main template can `{% include %}`; it
    /// is rendered with the same variables. The variable `partials` lists
    /// the names given, so a template can include optional fragments.
    pub fn partial(mut self, name: &str, template: impl Into<String>) -> Self {
        self.partials.insert(name.to_string(), template.into());
        self
    }

    /// Pins Envoy to these CPUs (benchmarks keep Envoy and the load
    /// generator on different cores).
    pub fn cpus(mut self, cpus: &[usize]) -> Self {
        self.cpus = Some(cpus.to_vec());
        self
    }

    /// Whether a failed start keeps its run directory (default: yes, for a
    /// post-mortem; tests that expect the failure turn it off).
    pub fn keep_failed_runs(mut self, keep: bool) -> Self {
        self.keep_failed_runs = keep;
        self
    }

    /// A file written into `run_dir` before Envoy starts (e.g. an ECDS
    /// resource file a `path_config_source` names), rendered as a template
    /// with the same variables.
    pub fn file(mut self, name: &str, template: impl Into<String>) -> Self {
        self.files.insert(name.to_string(), template.into());
        self
    }

    /// A file copied as it is into `run_dir` as `name` before Envoy starts
    /// (e.g. a module outside `build/wasm`: Envoy in Docker sees the run
    /// directory).
    pub fn copy_file(mut self, name: &str, source: &Path) -> Self {
        self.copies.insert(name.to_string(), source.to_path_buf());
        self
    }

    fn render(&self, run_dir: &Path) -> Result<String> {
        self.render_named("envoy.yaml", run_dir)
    }

    /// Renders the main template or one of [`file`](Self::file)'s.
    fn render_named(&self, which: &str, run_dir: &Path) -> Result<String> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        // minijinja JSON-escapes everything in `.yaml` templates by default;
        // templates quote explicitly (`| tojson`) where they need it.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.add_template("envoy.yaml", &self.template)
            .context("parsing the Envoy config template")?;
        for (name, text) in &self.files {
            env.add_template(name, text)
                .with_context(|| format!("parsing file template {name:?}"))?;
        }
        for (name, text) in &self.partials {
            env.add_template(name, text)
                .with_context(|| format!("parsing template fragment {name:?}"))?;
        }
        let mut vars = self.vars.clone();
        vars.insert(
            "partials".into(),
            serde_json::to_value(self.partials.keys().collect::<Vec<_>>())?,
        );
        vars.insert(
            "wasm_dir".into(),
            self.runtime.wasm_dir().display().to_string().into(),
        );
        vars.insert("run_dir".into(), run_dir.display().to_string().into());
        env.get_template(which)
            .and_then(|t| t.render(&vars))
            .with_context(|| format!("rendering {which}"))
    }

    /// A run directory with the rendered config and files.
    fn prepare(&self) -> Result<RunDir, EnvoyError> {
        let mut run = RunDir::new().map_err(setup_error)?;
        if std::env::var_os("XP_KEEP_RUN").is_some() {
            eprintln!("XP run dir {}", run.keep().display());
        }
        let config = self.render(run.path()).map_err(setup_error)?;
        run.write("envoy.yaml", &config).map_err(setup_error)?;
        for name in self.files.keys() {
            let text = self.render_named(name, run.path()).map_err(setup_error)?;
            run.write(name, &text).map_err(setup_error)?;
        }
        for (name, source) in &self.copies {
            std::fs::copy(source, run.path().join(name))
                .with_context(|| format!("copying {}", source.display()))
                .map_err(setup_error)?;
        }
        Ok(run)
    }

    /// Renders the config and runs `envoy --mode validate` on it.
    pub async fn validate(self) -> Result<(), EnvoyError> {
        let run = self.prepare()?;
        let args = vec![
            "--mode".to_string(),
            "validate".into(),
            "-c".into(),
            run.file("envoy.yaml"),
            "-l".into(),
            "warning".into(),
        ];
        let (mut child, _container) =
            spawn(&self.runtime, &run, &args, None).map_err(setup_error)?;
        let status = child.wait().await.map_err(|e| setup_error(e.into()))?;
        if status.success() {
            Ok(())
        } else {
            Err(EnvoyError {
                summary: format!("envoy --mode validate rejected the config ({status})"),
                log: run.log_tail(60),
            })
        }
    }

    /// Runs the native Envoy binary under `command` (its first word the
    /// program, the binary and Envoy's arguments appended), e.g. valgrind.
    /// `{run_dir}` in a word is replaced by the run directory. Ignored by
    /// the Docker runtime.
    pub fn wrap(mut self, command: Vec<String>) -> Self {
        self.wrapper = command;
        self
    }

    /// Starts Envoy and waits until the admin `/ready` answers 200.
    pub async fn start(self) -> Result<Envoy, EnvoyError> {
        let run = self.prepare()?;
        let mut args = vec![
            "-c".to_string(),
            run.file("envoy.yaml"),
            "--admin-address-path".into(),
            run.file("admin-address"),
            // Hot restart shares memory by base id: parallel Envoys would collide.
            "--disable-hot-restart".into(),
            "--concurrency".into(),
            self.concurrency.to_string(),
            "-l".into(),
            self.log_level.clone(),
        ];
        if let Some(spec) = &self.component_log_level {
            args.push("--component-log-level".into());
            args.push(spec.clone());
        }
        let spawned = match (&self.runtime, self.wrapper.split_first()) {
            (Runtime::Native { binary }, Some((program, rest))) => {
                let run_dir = run.path().display().to_string();
                let mut wrapped: Vec<String> = rest
                    .iter()
                    .map(|w| w.replace("{run_dir}", &run_dir))
                    .collect();
                wrapped.push(binary.display().to_string());
                wrapped.extend(args);
                let runtime = Runtime::Native {
                    binary: PathBuf::from(program),
                };
                spawn(&runtime, &run, &wrapped, self.cpus.as_deref())
            }
            _ => spawn(&self.runtime, &run, &args, self.cpus.as_deref()),
        };
        let (child, container) = spawned.map_err(setup_error)?;
        let config = std::fs::read_to_string(run.path().join("envoy.yaml"))
            .map_err(|e| setup_error(e.into()))?;
        let mut envoy = Envoy {
            runtime: self.runtime,
            child,
            container,
            run,
            admin: None,
            listeners: BTreeMap::new(),
            config,
            keep_failed_runs: self.keep_failed_runs,
        };
        envoy.wait_ready(self.startup_timeout).await?;
        Ok(envoy)
    }
}

fn setup_error(e: anyhow::Error) -> EnvoyError {
    EnvoyError {
        summary: format!("could not start Envoy: {e:#}"),
        log: String::new(),
    }
}

/// A scratch directory Envoy can read and write in either runtime.
struct RunDir {
    dir: tempfile::TempDir,
}

/// Envoy's error lines (critical/error level), the heart of a failure.
fn error_lines(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains("][critical][") || l.contains("][error]["))
        .collect::<Vec<_>>()
        .join("\n")
}

impl RunDir {
    fn new() -> Result<RunDir> {
        let dir = tempfile::Builder::new()
            .prefix("switchyard-envoy-")
            .tempdir()
            .context("creating Envoy's run directory")?;
        // The official image runs Envoy as uid 101: let it write here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        Ok(RunDir { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn write(&self, name: &str, text: &str) -> Result<()> {
        std::fs::write(self.dir.path().join(name), text).with_context(|| format!("writing {name}"))
    }

    fn log(&self) -> String {
        let bytes = std::fs::read(self.dir.path().join("envoy.log")).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Keeps the directory (config, log) for a post-mortem.
    fn keep(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

static CONTAINER_SEQ: AtomicU32 = AtomicU32::new(0);

/// Starts Envoy with `args`; stdout and stderr go to `run_dir/envoy.log`.
fn spawn(
    runtime: &Runtime,
    run: &RunDir,
    args: &[String],
    cpus: Option<&[usize]>,
) -> Result<(Child, Option<String>)> {
    let log = std::fs::File::create(run.path().join("envoy.log"))?;
    let log_err = log.try_clone()?;
    let (mut cmd, container) = match runtime {
        Runtime::Native { binary } => {
            let mut cmd = Command::new(binary);
            cmd.args(args);
            let cpus = cpus.map(<[usize]>::to_vec);
            // Envoy dies with the test process even when it is killed hard.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if let Some(cpus) = &cpus {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        for &c in cpus {
                            libc::CPU_SET(c, &mut set);
                        }
                        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
            (cmd, None)
        }
        Runtime::Docker { image } => {
            let name = format!(
                "switchyard-envoy-{}-{}",
                std::process::id(),
                CONTAINER_SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let run_dir = run.path().display().to_string();
            let wasm = paths::wasm_dir();
            std::fs::create_dir_all(&wasm)?;
            let mut cmd = Command::new("docker");
            cmd.args(["run", "--rm", "--name", &name, "--network", "host"])
                .args(["--label", &format!("{CONTAINER_LABEL}=1")])
                .args(cpus.map(|c| {
                    let list: Vec<String> = c.iter().map(usize::to_string).collect();
                    format!("--cpuset-cpus={}", list.join(","))
                }))
                .args(["-v", &format!("{run_dir}:{run_dir}")])
                .args(["-v", &format!("{}:{CONTAINER_WASM_DIR}:ro", wasm.display())])
                .arg(image)
                .args(args);
            (cmd, Some(name))
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning Envoy ({})", runtime.name()))?;
    Ok((child, container))
}

/// A running Envoy. Dropping it stops Envoy and removes its container.
pub struct Envoy {
    runtime: Runtime,
    child: Child,
    container: Option<String>,
    run: RunDir,
    admin: Option<SocketAddr>,
    listeners: BTreeMap<String, SocketAddr>,
    config: String,
    keep_failed_runs: bool,
}

impl Envoy {
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), EnvoyError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Give the log writer a moment: the reason is its last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let what = format!(
                    "Envoy ({}) exited during start-up with {status}",
                    self.runtime.name()
                );
                return Err(self.failure(what));
            }
            if self.admin.is_none() {
                self.admin = read_admin_address(&self.run.file("admin-address"));
            }
            if let Some(admin) = self.admin
                && let Ok(resp) = crate::traffic::get(admin, "admin", "/ready", &[]).await
                && resp.status == 200
            {
                break;
            }
            if Instant::now() > deadline {
                let what = format!(
                    "Envoy ({}) not ready after {timeout:?}",
                    self.runtime.name()
                );
                return Err(self.failure(what));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.listeners = self.read_listeners().await.map_err(|e| EnvoyError {
            summary: format!("reading Envoy's listeners: {e:#}"),
            log: self.run.log_tail(20),
        })?;
        Ok(())
    }

    /// An error carrying Envoy's own error lines; the run directory (rendered
    /// config and full log) is kept and named for a post-mortem.
    fn failure(&mut self, what: String) -> EnvoyError {
        let log = self.run.log();
        let kept = if self.keep_failed_runs {
            format!(
                "\n(config and full log kept in {})",
                self.run.keep().display()
            )
        } else {
            String::new()
        };
        EnvoyError {
            summary: format!("{what}\n{}{kept}", error_lines(&log)),
            log: self.run.log_tail(30),
        }
    }

    async fn read_listeners(&self) -> Result<BTreeMap<String, SocketAddr>> {
        let body = self.admin_get("/listeners?format=json").await?;
        let doc: serde_json::Value = serde_json::from_str(&body)?;
        let mut out = BTreeMap::new();
        for l in doc["listener_statuses"].as_array().into_iter().flatten() {
            let name = l["name"].as_str().unwrap_or_default().to_string();
            let sock = &l["local_address"]["socket_address"];
            if let (Some(ip), Some(port)) = (sock["address"].as_str(), sock["port_value"].as_u64())
            {
                out.insert(name, format!("{ip}:{port}").parse()?);
            }
        }
        Ok(out)
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The admin interface address.
    pub fn admin_addr(&self) -> SocketAddr {
        // invariant: wait_ready only returns Ok once the admin address is known.
        self.admin
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The address Envoy bound for listener `name`.
    pub fn listener(&self, name: &str) -> Result<SocketAddr> {
        self.listeners.get(name).copied().ok_or_else(|| {
            anyhow!(
                "Envoy has no listener {name:?} (has: {:?})",
                self.listeners.keys().collect::<Vec<_>>()
            )
        })
    }

    /// Envoy's process id as the host sees it.
    pub fn pid(&self) -> Option<u32> {
        match &self.container {
            None => self.child.id(),
            Some(name) => {
                let out = std::process::Command::new("docker")
                    .args(["inspect", "-f", "{{.State.Pid}}", name])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout).trim().parse().ok()
            }
        }
    }

    /// CPU time Envoy has used so far (user + system, all threads).
    pub fn cpu_time(&self) -> Result<Duration> {
        let pid = self.pid().ok_or_else(|| anyhow!("Envoy has no pid"))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the parenthesised command name; utime and stime are
        // the 12th and 13th of those (fields 14 and 15 of the whole line).
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("unreadable /proc/{pid}/stat"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields
            .get(11..13)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .iter()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .sum();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_nanos(
            ticks.saturating_mul(1_000_000_000) / hz,
        ))
    }

    /// The container's name (Docker runtime only).
    pub fn container_name(&self) -> Option<&str> {
        self.container.as_deref()
    }

    /// The rendered envoy.yaml.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// GET on the admin interface; the body on 200, an error otherwise.
    pub async fn admin_get(&self, path: &str) -> Result<String> {
        let resp = crate::traffic::get(self.admin_addr(), "admin", path, &[]).await?;
        if resp.status != 200 {
            bail!("admin {path}: status {}", resp.status);
        }
        Ok(String::from_utf8_lossy(&resp.body).into_owned())
    }

    /// Counters and gauges from `/stats?format=json`, by name.
    pub async fn stats(&self) -> Result<BTreeMap<String, u64>> {
        // Switchyard modules sum counters in the VM and hand them to Envoy
        // on a tick (every 250 ms at most): wait one flush period so what
        // the traffic before this call counted is in.
        tokio::time::sleep(STATS_FLUSH_WAIT).await;
        let body = self.admin_get("/stats?format=json").await?;
        let doc: serde_json::Value = serde_json::from_str(&body)?;
        let mut out = BTreeMap::new();
        for s in doc["stats"].as_array().into_iter().flatten() {
            if let (Some(name), Some(value)) = (s["name"].as_str(), s["value"].as_u64()) {
                out.insert(name.to_string(), value);
            }
        }
        Ok(out)
    }

    /// One counter or gauge; `None` when Envoy does not have it.
    pub async fn stat(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.stats().await?.get(name).copied())
    }

    /// Everything Envoy logged so far.
    pub fn logs(&self) -> String {
        self.run.log()
    }

    /// The run's scratch directory (the template's `run_dir`; files Envoy
    /// writes there, such as file access logs, can be read back).
    pub fn run_dir(&self) -> &Path {
        self.run.path()
    }

    /// Stops Envoy now (what `Drop` does, made explicit).
    pub fn stop(self) {}

    fn cleanup(&mut self) {
        let _ = self.child.start_kill();
        if let Some(name) = self.container.take() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- envoy ({}) log tail ---\n{}",
                self.runtime.name(),
                self.run.log_tail(40)
            );
        }
        self.cleanup();
    }
}

fn read_admin_address(path: &str) -> Option<SocketAddr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod version_tests {
    #[test]
    fn the_release_is_read_from_envoy_version_output() {
        let text = "\n/root/envoy version: 2c8b5a5e/1.36.4/Clean/RELEASE/BoringSSL\n\n";
        assert_eq!(super::version_of(text).as_deref(), Some("1.36.4"));
        assert_eq!(super::version_of("no version here"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installed_harness_finds_envoy_on_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let envoy = dir.path().join("envoy");
        std::fs::write(&envoy, b"").unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).unwrap();
        let missing = || Err(anyhow::anyhow!("build/envoy-path is missing"));
        // No variable, no set-up record: the PATH's envoy.
        assert_eq!(
            envoy_binary(None, missing(), Some(path.clone())).unwrap(),
            envoy
        );
        // The variable, then the record, win over the PATH.
        let explicit = PathBuf::from("/opt/envoy");
        assert_eq!(
            envoy_binary(Some(explicit.clone()), missing(), Some(path.clone())).unwrap(),
            explicit
        );
        let recorded = PathBuf::from("/srv/envoy");
        assert_eq!(
            envoy_binary(None, Ok(recorded.clone()), Some(path)).unwrap(),
            recorded
        );
        // Nothing anywhere: the record's error.
        let err = envoy_binary(None, missing(), None).unwrap_err().to_string();
        assert!(err.contains("envoy-path"), "{err}");
    }
}
