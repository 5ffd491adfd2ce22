//! A TCP proxy on a free loopback port, for faults a server process cannot show: a connection
//! that goes silent while the server is healthy (a half-open connection after a failover that
//! blackholed it, a NAT entry dropped), an address that moves to another server (a failover
//! that repoints DNS or a virtual IP), and a slow but healthy path (every reply delayed).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

/// How often an idle pump looks at the proxy's switches.
const POLL: Duration = Duration::from_millis(20);

/// Forwards connections to a target port until dropped.
///
/// ```no_run
/// let server = redis_memo_testkit::RedisServer::start().unwrap();
/// let proxy = redis_memo_testkit::TcpProxy::start(server.port()).unwrap();
/// let url = proxy.url(); // connect through it
/// proxy.freeze_existing(); // open connections go silent; new ones are forwarded
/// # drop(url);
/// ```
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    target: AtomicU16,
    /// Connections accepted before this generation forward nothing more.
    frozen_below: AtomicU64,
    generation: AtomicU64,
    /// Microseconds each chunk of a server's reply is held before it is forwarded.
    reply_delay_us: AtomicU64,
    stopped: AtomicBool,
    /// Every socket, to shut down when the proxy is dropped.
    sockets: Mutex<Vec<TcpStream>>,
    /// Whether what clients send is held, and how many chunks are waiting.
    hold: Mutex<Hold>,
    /// Signalled when a chunk starts waiting and when the hold ends.
    hold_changed: Condvar,
}

#[derive(Debug, Default)]
struct Hold {
    holding: bool,
    waiting: usize,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards each connection to `target_port`.
    ///
    /// # Errors
    /// If the listening socket cannot be made.
    pub fn start(target_port: u16) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            target: AtomicU16::new(target_port),
            frozen_below: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            reply_delay_us: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            sockets: Mutex::default(),
            hold: Mutex::default(),
            hold_changed: Condvar::new(),
        });
        let accepting = Arc::clone(&shared);
        thread::spawn(move || accept_loop(&listener, &accepting));
        Ok(TcpProxy { port, shared })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Every connection open now stops forwarding in both directions, and stays open: what
    /// its client sends is accepted and never answered. Later connections are forwarded.
    pub fn freeze_existing(&self) {
        let next = self.shared.generation.fetch_add(1, SeqCst) + 1;
        self.shared.frozen_below.store(next, SeqCst);
    }

    /// Holds every chunk of every server reply for `delay` before forwarding it, on open and
    /// new connections: a slow network or server that still answers.
    pub fn delay_replies(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.reply_delay_us.store(micros, SeqCst);
    }

    /// From now on, what clients send (on every connection) waits in the proxy until
    /// [`TcpProxy::release_requests`]; replies and pushes still flow.
    pub fn hold_requests(&self) {
        self.shared.hold().holding = true;
    }

    /// Blocks until a client's request is waiting in the proxy (see
    /// [`TcpProxy::hold_requests`]), at most `timeout`; whether one is.
    pub fn wait_for_held_request(&self, timeout: Duration) -> bool {
        let hold = self.shared.hold();
        let (hold, _) = self
            .shared
            .hold_changed
            .wait_timeout_while(hold, timeout, |hold| hold.waiting == 0)
            .unwrap_or_else(PoisonError::into_inner);
        hold.waiting > 0
    }

    /// Forwards the held requests, in order, and holds nothing more.
    pub fn release_requests(&self) {
        self.shared.hold().holding = false;
        self.shared.hold_changed.notify_all();
    }

    /// New connections go to `target_port` from now on; open ones keep their server.
    pub fn retarget(&self, target_port: u16) {
        self.shared.target.store(target_port, SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, SeqCst);
        let sockets = self
            .shared
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for socket in sockets.iter() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl Shared {
    fn hold(&self) -> std::sync::MutexGuard<'_, Hold> {
        self.hold.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once a client's chunk may go on (at once unless requests are held).
    fn pass_request(&self) {
        let mut hold = self.hold();
        if !hold.holding {
            return;
        }
        hold.waiting += 1;
        self.hold_changed.notify_all();
        let mut hold = self
            .hold_changed
            .wait_while(hold, |hold| hold.holding)
            .unwrap_or_else(PoisonError::into_inner);
        hold.waiting -= 1;
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stopped.load(SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let target = shared.target.load(SeqCst);
                let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, target)) else {
                    continue;
                };
                let generation = shared.generation.load(SeqCst);
                if let Err(error) = start_pumps(client, server, generation, shared) {
                    eprintln!("redis-memo-testkit proxy: {error}");
                }
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(_) => thread::sleep(POLL),
        }
    }
}

fn start_pumps(
    client: TcpStream,
    server: TcpStream,
    generation: u64,
    shared: &Arc<Shared>,
) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    {
        let mut sockets = shared
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        sockets.push(client.try_clone()?);
        sockets.push(server.try_clone()?);
    }
    for (from, to, replies) in [
        (client.try_clone()?, server.try_clone()?, false),
        (server, client, true),
    ] {
        let shared = Arc::clone(shared);
        thread::spawn(move || pump(from, to, generation, replies, &shared));
    }
    Ok(())
}

/// Copies `from` to `to` until either closes (`replies`: from the server, so delayed as
/// configured); once this connection is frozen, reads nothing more (the kernel still accepts
/// what the peer sends, as a silent network would).
fn pump(mut from: TcpStream, to: TcpStream, generation: u64, replies: bool, shared: &Arc<Shared>) {
    let _ = from.set_read_timeout(Some(POLL));
    // Written by a thread of its own, each chunk at its arrival plus the delay: replies are
    // late, not slower to follow each other (a slow path, not a saturated one).
    let (sender, receiver) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    let writer_shared = Arc::clone(shared);
    thread::spawn(move || {
        let mut to = to;
        for (arrived, chunk) in receiver {
            let delay = if replies {
                Duration::from_micros(writer_shared.reply_delay_us.load(SeqCst))
            } else {
                Duration::ZERO
            };
            let due = arrived + delay;
            let now = std::time::Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if !replies {
                writer_shared.pass_request();
            }
            if to.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if shared.stopped.load(SeqCst) {
            return;
        }
        if generation < shared.frozen_below.load(SeqCst) {
            thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buffer) {
            // Dropping the sender ends the writer, which then closes its side.
            Ok(0) => return,
            Ok(read) => {
                // A freeze between the read and the write drops these bytes: silent either way.
                if generation < shared.frozen_below.load(SeqCst) {
                    continue;
                }
                let chunk = (std::time::Instant::now(), buffer[..read].to_vec());
                if sender.send(chunk).is_err() {
                    return;
                }
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}
