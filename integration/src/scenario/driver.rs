//! The scenario traffic driver: flows side by side, each a sequence of
//! phases (open loop at a rate, closed loop at a concurrency, or a replay
//! at recorded offsets), every request kept as an [`Obs`] with what was sent
//! and what came back.
//!
//! Open-loop and replay latency counts from the intended send time (a slow
//! Envoy cannot hide its queueing); closed-loop latency from the send.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::spec::{Pick, RequestDef};
use crate::traffic::{HttpClient, RequestSpec};

/// One request: when it was due, what was sent, what came back.
#[derive(Clone, Debug)]
pub struct Obs {
    /// Intended send time, from the start of the traffic.
    pub at: Duration,
    /// Until the whole response was read (or the error / timeout).
    pub latency: Duration,
    /// 0 when there was no response (transport error or timeout).
    pub status: u16,
    pub timeout: bool,
    /// `x-switchyard-backend` of the response.
    pub backend: Option<Arc<str>>,
    pub flow: usize,
    pub phase: usize,
    pub host: Arc<str>,
    pub path: String,
    pub client: Option<Arc<str>>,
    pub request_id: Option<String>,
}

/// Totals while the run goes on (for the progress bar).
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub completed: AtomicU64,
    pub ok: AtomicU64,
    pub limited: AtomicU64,
    pub server_errors: AtomicU64,
    pub errors: AtomicU64,
    pub dropped: AtomicU64,
}

impl Live {
    fn add(&self, o: &Obs) {
        let c = |a: &AtomicU64| {
            a.fetch_add(1, Ordering::Relaxed);
        };
        c(&self.sent);
        match o.status {
            0 => c(&self.errors),
            s => {
                c(&self.completed);
                match s {
                    200..=299 => c(&self.ok),
                    429 => c(&self.limited),
                    500..=599 => c(&self.server_errors),
                    _ => {}
                }
            }
        }
    }
    pub fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }
}

/// A piece of a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Lit(String),
    /// `{i}`: the flow's request number.
    Index,
    /// `{rand:N}`: uniform in `0..N`.
    Rand(u64),
}

/// Parses `/items/{rand:100}?page={i}`.
pub fn parse_path_template(t: &str) -> Result<Vec<Seg>, String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            out.push(Seg::Lit(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed {{ in {t:?}"))?
            + open;
        let inner = &rest[open + 1..close];
        if inner == "i" {
            out.push(Seg::Index);
        } else if let Some(n) = inner.strip_prefix("rand:") {
            match n.parse::<u64>() {
                Ok(n) if n > 0 => out.push(Seg::Rand(n)),
                _ => return Err(format!("{{rand:N}} needs N >= 1, got {inner:?}")),
            }
        } else {
            return Err(format!(
                "unknown placeholder {{{inner}}} (use {{i}} or {{rand:N}})"
            ));
        }
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unopened }} in {t:?}"));
    }
    if !rest.is_empty() {
        out.push(Seg::Lit(rest.to_string()));
    }
    Ok(out)
}

pub fn check_path_template(t: &str) -> Result<(), String> {
    let segs = parse_path_template(t)?;
    let sample = expand(&segs, 0, &mut StdRng::seed_from_u64(0));
    let path = if sample.starts_with('/') {
        sample
    } else {
        format!("/{sample}")
    };
    path.parse::<hyper::Uri>()
        .map(|_| ())
        .map_err(|e| format!("{t:?} does not make a valid path: {e}"))
}

fn expand(segs: &[Seg], i: u64, rng: &mut StdRng) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Lit(l) => s.push_str(l),
            Seg::Index => s.push_str(&i.to_string()),
            Seg::Rand(n) => s.push_str(&rng.random_range(0..*n).to_string()),
        }
    }
    s
}

/// A request kind of a mix, ready to use.
#[derive(Clone, Debug)]
pub struct MixEntry {
    pub weight: f64,
    pub method: String,
    pub host: Arc<str>,
    pub path: Vec<Seg>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl MixEntry {
    pub fn from_def(d: &RequestDef) -> Result<MixEntry> {
        Ok(MixEntry {
            weight: d.weight,
            method: d.method.clone(),
            host: Arc::from(d.host.as_str()),
            path: parse_path_template(&d.path).map_err(anyhow::Error::msg)?,
            headers: d
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            body: d.body.clone().map(Bytes::from).unwrap_or_default(),
        })
    }
}

/// A request recorded elsewhere, sent at `offset` from the phase start.
#[derive(Clone, Debug)]
pub struct Shot {
    pub offset: Duration,
    pub spec: RequestSpec,
}

#[derive(Clone, Debug)]
pub enum Load {
    Open {
        rate: f64,
        max_in_flight: usize,
    },
    Closed {
        concurrency: usize,
    },
    Replay {
        shots: Arc<Vec<Shot>>,
        max_in_flight: usize,
    },
}

#[derive(Clone, Debug)]
pub struct PhasePlan {
    pub name: String,
    /// From the start of the traffic.
    pub start: Duration,
    pub duration: Duration,
    pub load: Load,
    pub mix: Arc<Vec<MixEntry>>,
}

#[derive(Clone, Debug)]
pub struct ClientPlan {
    pub addresses: Vec<Arc<str>>,
    pub pick: Pick,
    pub header: String,
}

#[derive(Clone, Debug)]
pub struct FlowPlan {
    pub name: String,
    pub phases: Vec<PhasePlan>,
    pub clients: Option<ClientPlan>,
    pub seed: u64,
}

impl FlowPlan {
    pub fn end(&self) -> Duration {
        self.phases
            .iter()
            .map(|p| p.start + p.duration)
            .max()
            .unwrap_or_default()
    }
}

/// Request numbering and random choices of one flow (one lock per flow:
/// the same seed gives the same request sequence).
struct Gen {
    rng: StdRng,
    next: u64,
    rr: usize,
}

struct FlowCtx {
    index: usize,
    target: SocketAddr,
    client: HttpClient,
    timeout: Duration,
    run_id: String,
    t0: Instant,
    clients: Option<ClientPlan>,
    seq: Mutex<Gen>,
    live: Arc<Live>,
    out: Arc<Mutex<Vec<Obs>>>,
    dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a request carries besides its spec, for the record.
struct Sent {
    spec: RequestSpec,
    client: Option<Arc<str>>,
    request_id: Option<String>,
}

impl FlowCtx {
    /// The next request of a mix.
    fn next_from_mix(&self, mix: &[MixEntry]) -> Sent {
        let mut g = lock(&self.seq);
        let i = g.next;
        g.next += 1;
        let total: f64 = mix.iter().map(|m| m.weight).sum();
        let mut x = g.rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
        let mut entry = mix.last();
        for m in mix {
            if x < m.weight {
                entry = Some(m);
                break;
            }
            x -= m.weight;
        }
        let mut spec = RequestSpec::default();
        if let Some(e) = entry {
            spec.method = e.method.clone();
            spec.host = e.host.to_string();
            spec.path = expand(&e.path, i, &mut g.rng);
            spec.headers = e.headers.clone();
            spec.body = e.body.clone();
        }
        let client = self.pick_client(&mut g);
        if let (Some(c), Some(plan)) = (&client, &self.clients) {
            spec.headers.push((plan.header.clone(), c.to_string()));
        }
        let id = format!("{}-f{}-{i}", self.run_id, self.index);
        if !spec.headers.iter().any(|(k, _)| k == "x-request-id") {
            spec.headers.push(("x-request-id".into(), id.clone()));
        }
        Sent {
            spec,
            client,
            request_id: Some(id),
        }
    }

    fn pick_client(&self, g: &mut Gen) -> Option<Arc<str>> {
        let plan = self.clients.as_ref()?;
        if plan.addresses.is_empty() {
            return None;
        }
        let k = match plan.pick {
            Pick::Random => g.rng.random_range(0..plan.addresses.len()),
            Pick::RoundRobin => {
                g.rr = g.rr.wrapping_add(1) % plan.addresses.len();
                g.rr
            }
        };
        plan.addresses.get(k).cloned()
    }

    async fn send(&self, sent: Sent, phase: usize, intended: Instant) {
        let fut = self.client.send(self.target, &sent.spec);
        let (status, timeout, backend) = match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => (0, true, None),
            Ok(Err(_)) => (0, false, None),
            Ok(Ok(r)) => (r.status, false, r.backend().map(Arc::from)),
        };
        let host = match sent.spec.headers.iter().find(|(k, _)| k == "host") {
            Some((_, h)) => Arc::from(h.as_str()),
            None => Arc::from(sent.spec.host.as_str()),
        };
        let o = Obs {
            at: intended.saturating_duration_since(self.t0),
            latency: intended.elapsed(),
            status,
            timeout,
            backend,
            flow: self.index,
            phase,
            host,
            path: sent.spec.path,
            client: sent.client,
            request_id: sent.request_id,
        };
        self.live.add(&o);
        lock(&self.out).push(o);
    }
}

/// What the flows did.
#[derive(Debug)]
pub struct Output {
    /// Sorted by intended send time.
    pub obs: Vec<Obs>,
    /// Per flow: open-loop sends skipped at the in-flight cap.
    pub dropped: Vec<u64>,
}

/// Runs the flows from `t0` until every one has ended and every request
/// is answered or timed out.
pub async fn run(
    target: SocketAddr,
    flows: &[FlowPlan],
    t0: Instant,
    timeout: Duration,
    run_id: &str,
    live: Arc<Live>,
) -> Result<Output> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    let mut ctxs = Vec::new();
    for (index, f) in flows.iter().enumerate() {
        let ctx = Arc::new(FlowCtx {
            index,
            target,
            client: HttpClient::new(),
            timeout,
            run_id: run_id.to_string(),
            t0,
            clients: f.clients.clone(),
            seq: Mutex::new(Gen {
                rng: StdRng::seed_from_u64(f.seed),
                next: 0,
                rr: usize::MAX,
            }),
            live: live.clone(),
            out: out.clone(),
            dropped: AtomicU64::new(0),
        });
        ctxs.push(ctx.clone());
        tasks.spawn(run_flow(ctx, f.phases.clone()));
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| anyhow::anyhow!("traffic flow failed: {e}"))?;
    }
    let mut obs = std::mem::take(&mut *lock(&out));
    obs.sort_by_key(|o| o.at);
    Ok(Output {
        obs,
        dropped: ctxs
            .iter()
            .map(|c| c.dropped.load(Ordering::Relaxed))
            .collect(),
    })
}

async fn run_flow(ctx: Arc<FlowCtx>, phases: Vec<PhasePlan>) {
    let mut requests = JoinSet::new();
    for (pi, p) in phases.into_iter().enumerate() {
        let start = ctx.t0 + p.start;
        let end = start + p.duration;
        match &p.load {
            Load::Open {
                rate,
                max_in_flight,
            } => {
                let slots = Arc::new(Semaphore::new(*max_in_flight));
                let mut k: u64 = 0;
                loop {
                    let offset = Duration::from_secs_f64(k as f64 / rate);
                    if offset >= p.duration {
                        break;
                    }
                    k += 1;
                    let due = start + offset;
                    tokio::time::sleep_until(due.into()).await;
                    reap(&mut requests);
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        ctx.live.dropped.fetch_add(1, Ordering::Relaxed);
                        ctx.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let sent = ctx.next_from_mix(&p.mix);
                    let c = ctx.clone();
                    requests.spawn(async move {
                        let _permit = permit;
                        c.send(sent, pi, due).await;
                    });
                }
            }
            Load::Replay {
                shots,
                max_in_flight,
            } => {
                let slots = Arc::new(Semaphore::new(*max_in_flight));
                for shot in shots.iter() {
                    let due = start + shot.offset;
                    tokio::time::sleep_until(due.into()).await;
                    reap(&mut requests);
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        ctx.live.dropped.fetch_add(1, Ordering::Relaxed);
                        ctx.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let request_id = shot
                        .spec
                        .headers
                        .iter()
                        .find(|(k, _)| k == "x-request-id")
                        .map(|(_, v)| v.clone());
                    let client = shot
                        .spec
                        .headers
                        .iter()
                        .find(|(k, _)| k == "x-forwarded-for")
                        .map(|(_, v)| Arc::from(v.as_str()));
                    let sent = Sent {
                        spec: shot.spec.clone(),
                        client,
                        request_id,
                    };
                    let c = ctx.clone();
                    requests.spawn(async move {
                        let _permit = permit;
                        c.send(sent, pi, due).await;
                    });
                }
            }
            Load::Closed { concurrency } => {
                tokio::time::sleep_until(start.into()).await;
                for _ in 0..*concurrency {
                    let c = ctx.clone();
                    let mix = p.mix.clone();
                    requests.spawn(async move {
                        while Instant::now() < end {
                            let sent = c.next_from_mix(&mix);
                            c.send(sent, pi, Instant::now()).await;
                        }
                    });
                }
            }
        }
        // The next phase starts on time; stragglers finish in the background.
        tokio::time::sleep_until(end.into()).await;
    }
    while requests.join_next().await.is_some() {}
}

fn reap(set: &mut JoinSet<()>) {
    while set.try_join_next().is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, BackendSpec};

    #[test]
    fn path_templates() {
        assert_eq!(
            parse_path_template("/a/{i}/b{rand:10}?x=1").unwrap(),
            vec![
                Seg::Lit("/a/".into()),
                Seg::Index,
                Seg::Lit("/b".into()),
                Seg::Rand(10),
                Seg::Lit("?x=1".into())
            ]
        );
        assert!(parse_path_template("/{j}").is_err());
        assert!(parse_path_template("/{rand:0}").is_err());
        assert!(parse_path_template("/{i").is_err());
        assert!(check_path_template("/a b").is_err());
        let segs = parse_path_template("/p{rand:3}").unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let p = expand(&segs, 0, &mut rng);
            assert!(["/p0", "/p1", "/p2"].contains(&p.as_str()), "{p}");
        }
    }

    fn mix(hosts: &[(&str, f64)]) -> Arc<Vec<MixEntry>> {
        Arc::new(
            hosts
                .iter()
                .map(|(h, w)| MixEntry {
                    weight: *w,
                    method: "GET".into(),
                    host: Arc::from(*h),
                    path: vec![Seg::Lit("/x/".into()), Seg::Index],
                    headers: vec![],
                    body: Bytes::new(),
                })
                .collect(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flows_phases_mixes_and_clients() {
        let b = Backend::start(BackendSpec::new("a")).await.unwrap();
        let open = FlowPlan {
            name: "open".into(),
            phases: vec![
                PhasePlan {
                    name: "one".into(),
                    start: Duration::ZERO,
                    duration: Duration::from_millis(500),
                    load: Load::Open {
                        rate: 200.0,
                        max_in_flight: 64,
                    },
                    mix: mix(&[("x.test", 3.0), ("y.test", 1.0)]),
                },
                PhasePlan {
                    name: "two".into(),
                    start: Duration::from_millis(500),
                    duration: Duration::from_millis(300),
                    load: Load::Closed { concurrency: 2 },
                    mix: mix(&[("z.test", 1.0)]),
                },
            ],
            clients: Some(ClientPlan {
                addresses: vec![Arc::from("192.0.2.1"), Arc::from("192.0.2.2")],
                pick: Pick::RoundRobin,
                header: "x-forwarded-for".into(),
            }),
            seed: 5,
        };
        let replay = FlowPlan {
            name: "replay".into(),
            phases: vec![PhasePlan {
                name: "replay".into(),
                start: Duration::from_millis(100),
                duration: Duration::from_millis(200),
                load: Load::Replay {
                    shots: Arc::new(
                        (0..10)
                            .map(|i| Shot {
                                offset: Duration::from_millis(i * 20),
                                spec: RequestSpec::get("r.test", format!("/r{i}"))
                                    .header("x-request-id", format!("rec-{i}")),
                            })
                            .collect(),
                    ),
                    max_in_flight: 10,
                },
                mix: Arc::new(vec![]),
            }],
            clients: None,
            seed: 1,
        };
        let live = Arc::new(Live::default());
        let t0 = Instant::now();
        let Output { obs, dropped } = run(
            b.addr(),
            &[open, replay],
            t0,
            Duration::from_secs(5),
            "t",
            live.clone(),
        )
        .await
        .unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(800));
        let phase_one: Vec<_> = obs.iter().filter(|o| o.flow == 0 && o.phase == 0).collect();
        assert_eq!(phase_one.len(), 100);
        let x = phase_one.iter().filter(|o| &*o.host == "x.test").count();
        assert!((55..=95).contains(&x), "{x} of 100 to x.test");
        assert!(phase_one.iter().all(|o| o.status == 200));
        assert!(
            obs.iter()
                .filter(|o| o.flow == 0 && o.phase == 1)
                .all(|o| &*o.host == "z.test")
        );
        assert!(obs.iter().filter(|o| o.flow == 0 && o.phase == 1).count() > 2);
        let clients: std::collections::BTreeSet<_> = phase_one
            .iter()
            .map(|o| o.client.clone().unwrap())
            .collect();
        assert_eq!(clients.len(), 2);
        assert_eq!(phase_one[0].request_id.as_deref(), Some("t-f0-0"));
        let rep: Vec<_> = obs.iter().filter(|o| o.flow == 1).collect();
        assert_eq!(rep.len(), 10);
        assert_eq!(rep[3].request_id.as_deref(), Some("rec-3"));
        assert_eq!(rep[3].at, Duration::from_millis(160));
        assert_eq!(Live::get(&live.sent), obs.len() as u64);
        assert_eq!(dropped, [0, 0]);
        assert_eq!(b.stats().requests, obs.len() as u64);
        let seen = b.last_request_headers().unwrap();
        assert!(seen.iter().any(|(k, _)| k == "x-request-id"));
    }
}
