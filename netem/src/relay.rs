//! One direction of the link: a thread that reads packets from the source TUN,
//! decides their fate with a [`Shaper`], holds the accepted ones until they are due
//! and writes them to the destination TUN.
//!
//! One thread does the reading, the scheduling and the writing, so no packet crosses
//! threads. It sleeps in `ppoll` on the source TUN, a wake-up pipe and a timerfd set
//! for the next due time (the thread's timer slack is 1 ns); after a long sleep it
//! wakes a little early and spins the rest. Packets due at once are written in a
//! batch, and reads are batched too, so neither starves the other. Buffers come from
//! a pool that grows to the largest number in flight and is reused, so the steady
//! state allocates nothing.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::conditions::{Direction, LinkConditions};
use crate::shaper::{Shaper, Verdict};
use crate::stats::{Counters, DirectionStats};
use crate::{Error, sys};

/// Packets read before the thread looks at its due packets again.
const READ_BATCH: usize = 64;

/// A wait at least this long ends [`SPIN`] early, and the rest is spun: waking up
/// from a long sleep takes longer (~100 µs after 50 ms here, in a VM, against
/// ~50 µs after 1 ms), and the spin costs at most 100 µs of CPU per such wait
/// (at worst, packets due every 500 µs after idle gaps, 20% of a core).
const LONG_WAIT: Duration = Duration::from_micros(500);

/// How early a long wait ends.
const SPIN: Duration = Duration::from_micros(100);

/// Most packets held at once per direction, whatever the conditions: enough for
/// 1 Gbit/s of 1500-byte packets with 750 ms of delay, and at most 98 MB of
/// buffers at MTU 1500. Beyond it packets are counted as queue drops.
const MAX_IN_FLIGHT: usize = 1 << 16;

/// A packet on its way.
struct Packet {
    due: Instant,
    len: usize,
    buf: Box<[u8]>,
}

/// What the controlling side and the thread share, besides the counters.
#[derive(Debug)]
struct State {
    /// The conditions last asked for.
    conditions: LinkConditions,
    /// How many times conditions were asked for.
    requested: u64,
    /// The last request the thread has applied.
    applied: u64,
    /// False once the thread has ended.
    running: bool,
}

#[derive(Debug)]
struct Control {
    counters: Counters,
    stop: AtomicBool,
    /// Mirrors `State::requested`, so the thread can check it without the lock.
    requested: AtomicU64,
    state: Mutex<State>,
    changed: Condvar,
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running direction. Dropping it stops and joins the thread.
#[derive(Debug)]
pub(crate) struct Relay {
    direction: Direction,
    control: Arc<Control>,
    wake: PipeWriter,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying packets from `input` to `output`.
    pub(crate) fn spawn(
        direction: Direction,
        input: Arc<File>,
        output: Arc<File>,
        conditions: LinkConditions,
        seed: u64,
        mtu: usize,
        realtime: bool,
    ) -> Result<Relay, Error> {
        let (wake_rx, wake) = io::pipe().map_err(|e| Error::io("creating a pipe", e))?;
        let control = Arc::new(Control {
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            requested: AtomicU64::new(0),
            state: Mutex::new(State {
                conditions,
                requested: 0,
                applied: 0,
                running: true,
            }),
            changed: Condvar::new(),
        });
        let worker = Worker {
            control: control.clone(),
            input,
            output,
            wake: wake_rx,
            shaper: Shaper::new(conditions, seed),
            mtu,
            realtime,
            queue: VecDeque::new(),
            pool: Vec::new(),
            timer: sys::Timer::new().map_err(|e| Error::io("creating a timerfd", e))?,
            armed: None,
            early: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("netem {}", direction.label()))
            .spawn(move || worker.run())
            .map_err(|e| Error::io("starting a relay thread", e))?;
        Ok(Relay {
            direction,
            control,
            wake,
            thread: Some(thread),
        })
    }

    /// The conditions last set.
    pub(crate) fn conditions(&self) -> LinkConditions {
        self.control.lock().conditions
    }

    /// Sets new conditions and returns once the thread applies them, so that every
    /// packet read afterwards meets them.
    pub(crate) fn set_conditions(&self, conditions: LinkConditions) -> Result<(), Error> {
        let mut state = self.control.lock();
        state.conditions = conditions;
        state.requested += 1;
        let target = state.requested;
        self.control.requested.store(target, Ordering::Release);
        self.wake_thread();
        while state.applied < target {
            if !state.running {
                return Err(Error::RelayStopped(self.direction.label()));
            }
            state = self
                .control
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Ok(())
    }

    /// The counters now.
    pub(crate) fn stats(&self) -> DirectionStats {
        self.control.counters.snapshot()
    }

    /// Whether the thread still runs.
    pub(crate) fn is_running(&self) -> bool {
        self.control.lock().running
    }

    fn wake_thread(&self) {
        // One byte is enough; the thread drains them all. A failure can only mean the
        // thread has gone, which the callers notice through `running`.
        let _ = (&self.wake).write(&[1]);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::Release);
        self.wake_thread();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread's side.
struct Worker {
    control: Arc<Control>,
    input: Arc<File>,
    output: Arc<File>,
    wake: PipeReader,
    shaper: Shaper,
    mtu: usize,
    /// Whether to ask for real-time scheduling.
    realtime: bool,
    /// Accepted packets by due time (which never decreases, so a FIFO).
    queue: VecDeque<Packet>,
    pool: Vec<Box<[u8]>>,
    /// Wakes the thread when the packet at the front is due.
    timer: sys::Timer,
    /// The due time the timer is set for.
    armed: Option<Instant>,
    /// The due time the timer is set to wake up [`SPIN`] ahead of.
    early: Option<Instant>,
}

impl Worker {
    fn run(mut self) {
        sys::set_precise_timers();
        if self.realtime {
            // Best effort: where it is not allowed the relay still works, only
            // busy threads can then delay it (see `DirectionStats::lateness_max`).
            let _ = sys::set_realtime(1);
        }
        // The error, if any, ends the relay; the link's owner sees it stopped.
        let _ = self.relay();
        let mut state = self.control.lock();
        state.running = false;
        self.control.changed.notify_all();
    }

    fn relay(&mut self) -> io::Result<()> {
        let mut seen = 0;
        loop {
            if self.control.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            if self.control.requested.load(Ordering::Acquire) != seen {
                seen = self.apply_conditions();
            }
            self.release_due(Instant::now());
            if !self.read_batch()? {
                // More may be waiting: look at the due packets, then read on.
                continue;
            }
            if let Some(due) = self.queue.front().map(|p| p.due) {
                let wait = due.saturating_duration_since(Instant::now());
                if wait.is_zero() || (self.early == Some(due) && wait <= SPIN) {
                    // Due, or woken early on purpose: spin to it (reading meanwhile).
                    std::hint::spin_loop();
                    continue;
                }
                if self.armed != Some(due) {
                    // After a long sleep, waking takes longer: wake early and spin.
                    let (sleep, early) = if wait >= LONG_WAIT {
                        (wait - SPIN, Some(due))
                    } else {
                        (wait, None)
                    };
                    self.timer.set(sleep)?;
                    self.armed = Some(due);
                    self.early = early;
                }
            }
            let ready =
                sys::wait_readable([self.input.as_fd(), self.wake.as_fd(), self.timer.as_fd()])?;
            if ready[1] {
                let mut sink = [0u8; 64];
                let _ = self.wake.read(&mut sink)?;
            }
            if ready[2] {
                self.timer.clear();
                self.armed = None;
            }
        }
    }

    /// Takes the conditions last asked for; a blackhole also discards what is in
    /// flight. Returns the request number applied.
    fn apply_conditions(&mut self) -> u64 {
        let mut state = self.control.lock();
        self.shaper.set_conditions(state.conditions);
        if state.conditions.blackhole {
            let discarded = self.queue.len() as u64;
            for packet in self.queue.drain(..) {
                self.pool.push(packet.buf);
            }
            Counters::add(&self.control.counters.dropped_blackhole, discarded);
        }
        state.applied = state.requested;
        self.control.changed.notify_all();
        state.applied
    }

    /// Writes every packet due by `now`.
    fn release_due(&mut self, now: Instant) {
        while self.queue.front().is_some_and(|p| p.due <= now) {
            if let Some(packet) = self.queue.pop_front() {
                self.deliver(&packet.buf[..packet.len], now - packet.due);
                self.pool.push(packet.buf);
            }
        }
    }

    /// Writes a packet `late` after its due time.
    fn deliver(&self, packet: &[u8], late: Duration) {
        let counters = &self.control.counters;
        // Counted first: once written, the receiver may act on the packet (and a test
        // read the counters) before this thread runs again.
        Counters::add(&counters.bytes_delivered, packet.len() as u64);
        Counters::add(&counters.packets_delivered, 1);
        // A TUN write takes the whole packet or fails.
        match (&*self.output).write(packet) {
            Ok(n) if n == packet.len() => counters.late(late),
            // The destination interface refused it (it is down): lost on the way.
            Ok(_) | Err(_) => {
                Counters::add(&counters.dropped_queue, 1);
                counters.packets_delivered.fetch_sub(1, Ordering::Release);
                counters
                    .bytes_delivered
                    .fetch_sub(packet.len() as u64, Ordering::Release);
            }
        }
    }

    /// Reads up to a batch of packets. Returns true if the TUN is drained.
    fn read_batch(&mut self) -> io::Result<bool> {
        for _ in 0..READ_BATCH {
            let mut buf = self
                .pool
                .pop()
                .unwrap_or_else(|| vec![0u8; self.mtu].into_boxed_slice());
            let len = match (&*self.input).read(&mut buf) {
                Ok(len) => len,
                Err(e) => {
                    self.pool.push(buf);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Ok(true),
                        io::ErrorKind::Interrupted => continue,
                        _ => return Err(e),
                    }
                }
            };
            if len == 0 {
                self.pool.push(buf);
                return Ok(true);
            }
            self.admit(buf, len);
        }
        Ok(false)
    }

    fn admit(&mut self, buf: Box<[u8]>, len: usize) {
        let now = Instant::now();
        let counters = &self.control.counters;
        Counters::add(&counters.packets_in, 1);
        Counters::add(&counters.bytes_in, len as u64);
        let drop_counter = match self.shaper.admit(now, len) {
            Verdict::Blackhole => &counters.dropped_blackhole,
            Verdict::Loss => &counters.dropped_loss,
            Verdict::Queue => &counters.dropped_queue,
            Verdict::Deliver(due) if due <= now && self.queue.is_empty() => {
                self.deliver(&buf[..len], now - due);
                self.pool.push(buf);
                return;
            }
            Verdict::Deliver(_) if self.queue.len() >= MAX_IN_FLIGHT => &counters.dropped_queue,
            Verdict::Deliver(due) => {
                self.queue.push_back(Packet { due, len, buf });
                return;
            }
        };
        Counters::add(drop_counter, 1);
        self.pool.push(buf);
    }
}
