//! Memory of the rendezvous server's table, and the cost of a lookup as the table grows.
//!
//! A counting global allocator (wrapping the system one) keeps the number of live heap
//! bytes. The benchmark builds a `Registry` (the server's state machine, no sockets) with
//! 1,000,000 clients, each registered from an address of its own through `handle_message`
//! (rate limit off, `max_clients` above a million), and prints the live bytes per entry:
//! (bytes with the entries - bytes of the empty registry) / entries.
//!
//! Then it times lookups: `handle_message(Lookup)` of a random registered id from a
//! registered address, and `poll_transmit` of the answer, in a table of 10 and of 1,000,000
//! clients. The baseline for this part is the small table: the cost should not grow with
//! the table (beyond what a table bigger than the CPU caches costs in memory accesses).
//!
//! ```sh
//! cargo run --release --example bench_memory           # 1,000,000 clients
//! cargo run --release --example bench_memory -- 0.1    # 100,000 clients
//! ```

mod bench_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bench_common::{arg_or, target};
use p2pchat::registry::{Registry, RegistryConfig};
use p2pchat::wire::{ClientId, Message};

/// The system allocator, counting the bytes it has handed out and not yet been given back.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is to the system allocator.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is to the system allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The address of client number `i`: a different one for each `i` below 16 million.
fn address(i: u32) -> SocketAddr {
    let ip = Ipv4Addr::from(0x0a00_0000 | (i / 50_000));
    SocketAddr::V4(SocketAddrV4::new(ip, 10_000 + (i % 50_000) as u16))
}

fn config(n: usize) -> RegistryConfig {
    RegistryConfig {
        ttl: Duration::from_secs(3600),
        max_clients: n + 1000,
        register_rate: 0.0,
        ..RegistryConfig::default()
    }
}

/// A registry with `n` clients registered, one per address.
fn filled(n: u32, now: Instant) -> Registry {
    let mut r = Registry::with_seed(config(n as usize), 1);
    for i in 0..n {
        r.handle_message(now, address(i), Message::register(None, [0; 32]));
        while r.poll_transmit().is_some() {}
        while r.poll_event().is_some() {}
    }
    assert_eq!(r.len(), n as usize);
    r
}

/// Nanoseconds per lookup of a registered id (random ones, or in order), answer drained.
fn lookup_cost(r: &mut Registry, n: u32, lookups: u32, now: Instant, random: bool) -> f64 {
    let from = address(0);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let started = Instant::now();
    for i in 0..lookups {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = if random {
            x % u64::from(n)
        } else {
            u64::from(i % n)
        } as ClientId
            + 1;
        r.handle_message(now, from, Message::lookup(id));
        let answer = r.poll_transmit().expect("an answer");
        debug_assert!(matches!(answer.message, Message::Found { .. }));
        black_box(answer);
    }
    started.elapsed().as_nanos() as f64 / f64::from(lookups)
}

fn main() {
    let scale = arg_or(1.0);
    let n = ((1_000_000.0 * scale) as u32).max(1000);
    println!("bench_memory: a Registry with {n} clients");
    let now = Instant::now();

    let before = live();
    let empty = Registry::with_seed(config(n as usize), 1);
    let empty_bytes = live() - before;
    drop(empty);

    let before = live();
    let started = Instant::now();
    let mut big = filled(n, now);
    let build_time = started.elapsed();
    let bytes = live() - before;
    let per_entry = (bytes - empty_bytes) as f64 / f64::from(n);
    println!(
        "empty registry: {empty_bytes} bytes; with {n} clients: {bytes} bytes live ({:.1} MB), peak {:.1} MB while building, built in {:.2} s ({:.0} registrations/s)",
        bytes as f64 / 1e6,
        (PEAK.load(Ordering::Relaxed) - before) as f64 / 1e6,
        build_time.as_secs_f64(),
        f64::from(n) / build_time.as_secs_f64(),
    );
    println!("bytes per entry: {per_entry:.1}");

    // Lookups: small table and big table, alternately, best of three each (the machine is
    // shared; the minimum is the least disturbed).
    let lookups = 2_000_000;
    let mut small = filled(10, now);
    let (mut cost_small, mut cost_big, mut cost_big_in_order) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..3 {
        cost_small = cost_small.min(lookup_cost(&mut small, 10, lookups, now, true));
        cost_big = cost_big.min(lookup_cost(&mut big, n, lookups, now, true));
        cost_big_in_order = cost_big_in_order.min(lookup_cost(&mut big, n, lookups, now, false));
    }
    println!(
        "lookup + poll_transmit of a random id: {cost_small:.0} ns with 10 clients, {cost_big:.0} ns with {n} clients (x{:.2})",
        cost_big / cost_small
    );
    println!(
        "  of ids in order (the same work, but the memory it touches is prefetched): {cost_big_in_order:.0} ns with {n} clients (x{:.2})",
        cost_big_in_order / cost_small
    );
    target(
        "bench_memory bytes per entry",
        &format!("{per_entry:.1}"),
        "<= 256",
        per_entry <= 256.0,
    );
}
