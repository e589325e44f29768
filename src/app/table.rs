//! The rendezvous server's table as it prints it: the active clients, and one line per
//! change (or a summary when many change at once). Every name and display name in it
//! comes from a client, so each goes through [`sanitize`] before it is printed.

use std::time::{Duration, Instant, SystemTime};

use crate::registry::{Entry, Registry, TableEvent};
use crate::text::sanitize;
use crate::wire::ClientId;

/// The table is printed at most this often; changes in between are shown together.
const TABLE_INTERVAL: Duration = Duration::from_millis(100);
/// More changes than this in one go are summed up in one line instead of one line each.
const MAX_CHANGE_LINES: usize = 20;

/// What the server prints as its table changes: the change lines at once, the table at
/// most every `TABLE_INTERVAL` (100 ms). Sans-IO: the loop passes `now` and writes the text.
pub struct TablePrinter {
    rows: usize,
    started: Instant,
    started_wall: SystemTime,
    /// The table changed and is yet to be printed.
    due: bool,
    /// When it may be printed next.
    next: Instant,
    changes: Vec<TableEvent>,
}

impl TablePrinter {
    /// A printer of tables of at most `rows` rows (only the count above that); `now` and
    /// `wall` are the same moment on the loop's clock and on the wall clock.
    pub fn new(rows: usize, now: Instant, wall: SystemTime) -> TablePrinter {
        TablePrinter {
            rows,
            started: now,
            started_wall: wall,
            due: false,
            next: now,
            changes: Vec::new(),
        }
    }

    /// When [`TablePrinter::update`] has a table to print, if it has one waiting.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due.then_some(self.next)
    }

    /// Takes the registry's table events and appends to `out` what is to be printed now.
    pub fn update(&mut self, registry: &mut Registry, now: Instant, out: &mut String) {
        self.changes
            .extend(std::iter::from_fn(|| registry.poll_event()));
        if !self.changes.is_empty() {
            out.push_str(&render_changes(&self.changes));
            self.changes.clear();
            self.due = true;
        }
        if self.due && now >= self.next {
            let (started, wall) = (self.started, self.started_wall);
            let wall = |at: Instant| wall + at.saturating_duration_since(started);
            out.push_str(&render_table(registry, self.rows, wall));
            self.due = false;
            self.next = now + TABLE_INTERVAL;
        }
    }
}

/// "client 3" or "client 3 (alice)".
fn client_label(id: ClientId, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("client {id} ({})", sanitize(name)),
        None => format!("client {id}"),
    }
}

/// One line per change, or one line summing them up when there are many.
pub fn render_changes(changes: &[TableEvent]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if changes.len() <= MAX_CHANGE_LINES {
        for ev in changes {
            let _ = match ev {
                TableEvent::Joined { id, addr } => writeln!(s, "client {id} joined from {addr}"),
                TableEvent::Named {
                    id,
                    addr,
                    name,
                    display_name,
                } => {
                    let name = sanitize(name);
                    match display_name {
                        Some(d) => {
                            writeln!(s, "client {id} at {addr} is now {name} ({})", sanitize(d))
                        }
                        None => writeln!(s, "client {id} at {addr} is now {name}"),
                    }
                }
                TableEvent::Left { id, addr, name } => {
                    writeln!(s, "{} at {addr} left", client_label(*id, name.as_deref()))
                }
                TableEvent::Expired { id, addr, name } => writeln!(
                    s,
                    "{} at {addr} expired (not heard from)",
                    client_label(*id, name.as_deref())
                ),
                TableEvent::Replaced { id, addr, name, by } => writeln!(
                    s,
                    "{} at {addr} left (replaced by its next run, client {by})",
                    client_label(*id, Some(name))
                ),
            };
        }
    } else {
        let count = |f: fn(&TableEvent) -> bool| changes.iter().filter(|e| f(e)).count();
        let _ = write!(
            s,
            "{} clients joined, {} left, {} expired",
            count(|e| matches!(e, TableEvent::Joined { .. })),
            count(|e| matches!(e, TableEvent::Left { .. } | TableEvent::Replaced { .. })),
            count(|e| matches!(e, TableEvent::Expired { .. })),
        );
        let named = count(|e| matches!(e, TableEvent::Named { .. }));
        if named > 0 {
            let _ = write!(s, ", {named} named");
        }
        s.push('\n');
    }
    s
}

/// The table as printed by the server: a count, then one row per client in id order (only
/// the count above `max_rows` clients). The name columns are there when a client has one.
pub fn render_table(
    registry: &Registry,
    max_rows: usize,
    wall_clock: impl Fn(Instant) -> std::time::SystemTime,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if registry.len() > max_rows {
        let _ = writeln!(
            s,
            "active clients: {} (more than {max_rows}: rows not printed; see --table-rows)",
            registry.len()
        );
        return s;
    }
    let _ = writeln!(s, "active clients: {}", registry.len());
    if !registry.is_empty() {
        let names = registry.has_names();
        let _ = write!(s, "  {:>6}  {:<24}  JOINED (UTC)", "ID", "ADDRESS");
        let _ = if names {
            writeln!(s, "  {:<16}  DISPLAY NAME", "NAME")
        } else {
            writeln!(s)
        };
        for e in registry.entries() {
            s.push_str(&table_row(&e, names, &wall_clock));
        }
    }
    s
}

/// One row of the table, with its name columns if `names`.
fn table_row(
    e: &Entry,
    names: bool,
    wall_clock: impl Fn(Instant) -> std::time::SystemTime,
) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "  {:>6}  {:<24}  {}",
        e.id,
        e.addr.to_string(),
        utc_time_of_day(wall_clock(e.joined))
    );
    if names {
        let name = e.name.as_deref().map_or_else(|| "-".into(), sanitize);
        let _ = write!(s, "      {name:<16}");
        if let Some(d) = &e.display_name {
            let _ = write!(s, "  {}", sanitize(d));
        }
        s.truncate(s.trim_end().len());
    }
    s.push('\n');
    s
}

/// "HH:MM:SS" of a wall-clock time, in UTC (no time-zone database needed).
pub fn utc_time_of_day(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, day % 3600 / 60, day % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegistryConfig;
    use crate::wire::Message;
    use std::net::SocketAddr;

    fn registry_with(n: u16) -> Registry {
        let mut r = Registry::with_seed(
            RegistryConfig {
                register_rate: 0.0,
                ..RegistryConfig::default()
            },
            1,
        );
        let now = Instant::now();
        for port in (1..=n).rev() {
            let from = SocketAddr::from(([127, 0, 0, 1], port));
            r.handle_message(now, from, Message::register(None, [0; 32]));
        }
        r
    }

    #[test]
    fn the_table_lists_rows_in_id_order_up_to_the_limit() {
        let r = registry_with(3);
        let text = render_table(&r, 3, |_| std::time::UNIX_EPOCH);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "active clients: 3");
        let ids: Vec<&str> = lines[2..]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(ids, ["1", "2", "3"]);
        assert!(lines[2].ends_with("00:00:00"), "{:?}", lines[2]);
    }

    #[test]
    fn above_the_limit_the_table_is_only_a_count() {
        let r = registry_with(4);
        let text = render_table(&r, 3, |_| std::time::UNIX_EPOCH);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("active clients: 4 (more than 3"), "{text}");
    }

    #[test]
    fn many_changes_are_summed_up_in_one_line() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let few: Vec<TableEvent> = (1..=3).map(|id| TableEvent::Joined { id, addr }).collect();
        assert_eq!(render_changes(&few).lines().count(), 3);
        let mut many: Vec<TableEvent> =
            (1..=30).map(|id| TableEvent::Joined { id, addr }).collect();
        many.push(TableEvent::Left {
            id: 1,
            addr,
            name: None,
        });
        many.push(TableEvent::Expired {
            id: 2,
            addr,
            name: Some("bob".into()),
        });
        assert_eq!(
            render_changes(&many),
            "30 clients joined, 1 left, 1 expired\n"
        );
    }

    #[test]
    fn names_get_columns_in_the_table_once_a_client_has_one() {
        let mut r = registry_with(2);
        let now = Instant::now();
        let alice = SocketAddr::from(([127, 0, 0, 1], 2)); // registered first: client 1
        let token = r.get(1).unwrap().token;
        r.handle_message(
            now,
            alice,
            Message::Claim {
                id: 1,
                token,
                name: "alice".into(),
                display_name: Some("Alice L.".into()),
                proof: None,
                nonce: 0,
                pad: Default::default(),
            },
        );
        let text = render_table(&r, 3, |_| std::time::UNIX_EPOCH);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "      ID  ADDRESS                   JOINED (UTC)  NAME              DISPLAY NAME"
        );
        assert_eq!(
            lines[2],
            "       1  127.0.0.1:2               00:00:00      alice             Alice L."
        );
        assert_eq!(
            lines[3],
            "       2  127.0.0.1:1               00:00:00      -"
        );
    }

    #[test]
    fn change_lines_name_the_client() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let changes = [
            TableEvent::Named {
                id: 3,
                addr,
                name: "alice".into(),
                display_name: Some("Alice L.".into()),
            },
            TableEvent::Left {
                id: 3,
                addr,
                name: Some("alice".into()),
            },
            TableEvent::Expired {
                id: 4,
                addr,
                name: None,
            },
            TableEvent::Replaced {
                id: 5,
                addr,
                name: "bob".into(),
                by: 6,
            },
        ];
        assert_eq!(
            render_changes(&changes),
            "client 3 at 127.0.0.1:9 is now alice (Alice L.)\n\
             client 3 (alice) at 127.0.0.1:9 left\n\
             client 4 at 127.0.0.1:9 expired (not heard from)\n\
             client 5 (bob) at 127.0.0.1:9 left (replaced by its next run, client 6)\n"
        );
        let many: Vec<TableEvent> = (1..=25)
            .map(|id| TableEvent::Named {
                id,
                addr,
                name: format!("n{id}"),
                display_name: None,
            })
            .chain(changes)
            .collect();
        assert_eq!(
            render_changes(&many),
            "0 clients joined, 2 left, 1 expired, 26 named\n"
        );
    }

    /// A display name (or a name) with a terminal escape sequence or a right-to-left
    /// override is printed as `sanitize` makes it, in the table and in the change lines.
    #[test]
    fn names_from_clients_are_printed_sanitized() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let hostile = "Eve\u{1b}[2J\u{1b}]0;owned\u{7}\u{202e}gnp.exe";
        let safe = sanitize(hostile);
        assert!(!safe.contains('\u{1b}'), "{safe:?}");
        let now = Instant::now();
        let entry = Entry {
            key: [0; 32],
            id: 7,
            addr,
            token: 1,
            joined: now,
            last_seen: now,
            name: Some("eve\u{1b}[31m".into()),
            display_name: Some(hostile.into()),
        };
        let row = table_row(&entry, true, |_| std::time::UNIX_EPOCH);
        assert!(!row.contains('\u{1b}') && !row.contains('\u{7}'), "{row:?}");
        assert!(row.ends_with(&format!("  {safe}\n")), "{row:?}");
        assert!(row.contains(&sanitize("eve\u{1b}[31m")), "{row:?}");
        let changes = [
            TableEvent::Named {
                id: 7,
                addr,
                name: "eve\u{1b}[31m".into(),
                display_name: Some(hostile.into()),
            },
            TableEvent::Left {
                id: 7,
                addr,
                name: Some(hostile.into()),
            },
            TableEvent::Replaced {
                id: 7,
                addr,
                name: hostile.into(),
                by: 8,
            },
        ];
        let text = render_changes(&changes);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert_eq!(text.lines().count(), 3, "{text:?}");
        assert!(text.contains(&format!("({safe})")), "{text:?}");
        // A display name the registry accepts (no control character) with U+202E: the
        // table prints it as sanitize does.
        let mut r = registry_with(1);
        let token = r.get(1).unwrap().token;
        let display = "Mallory \u{202e}cod.exe";
        r.handle_message(
            now,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            Message::Claim {
                id: 1,
                token,
                name: "mallory".into(),
                display_name: Some(display.into()),
                proof: None,
                nonce: 0,
                pad: Default::default(),
            },
        );
        let table = render_table(&r, 3, |_| std::time::UNIX_EPOCH);
        let row = table.lines().nth(2).unwrap();
        assert!(
            row.ends_with(&format!("  {}", sanitize(display))),
            "{table}"
        );
    }

    #[test]
    fn time_of_day_is_utc_hours_minutes_seconds() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 3600 * 13 + 60 * 5 + 9);
        assert_eq!(utc_time_of_day(t), "13:05:09");
    }
}
