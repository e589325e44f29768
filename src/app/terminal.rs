//! The terminal and stdin: where output lines go (above the prompt of a line editor on a
//! terminal, plain stdout for scripts), and the threads that read input lines.

use std::io::{self, BufRead, Write};
use std::sync::mpsc::Sender;
use std::sync::Arc;

/// Where the client's output goes.
pub trait Output {
    /// Shows one line (without its newline) and makes sure it is visible at once.
    fn line(&mut self, text: &str);

    /// The program is about to exit: whatever follows must be printed at once, and the
    /// terminal left as it was found.
    fn finish(&mut self) {}
}

/// Plain stdout, flushed after every line (for scripts and `--json`).
pub struct StdoutOutput;

impl Output for StdoutOutput {
    fn line(&mut self, text: &str) {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

/// Prints above the line being edited, so that incoming messages do not garble it.
///
/// The line editor runs on a thread of its own and holds the terminal in raw mode while it
/// waits for a key; a process that exits then would leave the user's shell without echo.
/// So the terminal's settings are saved before the editor starts and put back by
/// [`Output::finish`] (and on drop), after which lines are printed directly.
pub struct PrinterOutput {
    printer: Box<dyn rustyline::ExternalPrinter + Send>,
    saved: Option<TerminalSettings>,
    finished: bool,
}

impl Output for PrinterOutput {
    fn line(&mut self, text: &str) {
        if self.finished || self.printer.print(format!("{text}\n")).is_err() {
            StdoutOutput.line(text);
        }
    }

    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if let Some(saved) = &self.saved {
            saved.restore();
        }
        // Erase the prompt the editor left on the current line.
        let mut out = io::stdout().lock();
        let _ = write!(out, "\r\x1b[2K");
        let _ = out.flush();
    }
}

impl Drop for PrinterOutput {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The settings of the terminal on stdin, to put back at exit.
struct TerminalSettings(libc::termios);

impl TerminalSettings {
    fn save() -> Option<Self> {
        // SAFETY: tcgetattr only writes into the termios we pass; a zeroed termios is a
        // valid value of that plain C struct.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            (libc::tcgetattr(libc::STDIN_FILENO, &mut t) == 0).then_some(TerminalSettings(t))
        }
    }

    fn restore(&self) {
        // SAFETY: tcsetattr only reads the termios, which tcgetattr filled in.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0);
        }
    }
}

/// What the stdin reader hands to the event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Line(String),
    /// Ctrl-C at the prompt.
    Interrupt,
    /// End of input (Ctrl-D, or the end of a script's stdin).
    Eof,
}

/// Something that wakes the event loop after an input is queued.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// Reads stdin line by line on a thread of its own (stdin is not a terminal, or `--json`).
pub fn spawn_plain_reader(tx: Sender<Input>, wake: Wake) -> io::Result<()> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = io::stdin();
            let mut lines = stdin.lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match lines.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        // Invalid UTF-8 is replaced rather than refused: the line still goes.
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        if tx.send(Input::Line(line)).is_err() {
                            return;
                        }
                        wake();
                    }
                }
            }
            let _ = tx.send(Input::Eof);
            wake();
        })?;
    Ok(())
}

/// Starts a line editor (history, editing keys) on a thread of its own, and returns the
/// output that prints above the prompt.
pub fn spawn_terminal_reader(tx: Sender<Input>, wake: Wake) -> io::Result<PrinterOutput> {
    let saved = TerminalSettings::save();
    let (ptx, prx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("line-editor".into())
        .spawn(move || {
            let mut editor = match rustyline::DefaultEditor::new() {
                Ok(e) => e,
                Err(e) => {
                    let _ = ptx.send(Err(io::Error::other(e.to_string())));
                    return;
                }
            };
            match editor.create_external_printer() {
                Ok(p) => {
                    let boxed: Box<dyn rustyline::ExternalPrinter + Send> = Box::new(p);
                    if ptx.send(Ok(boxed)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = ptx.send(Err(io::Error::other(e.to_string())));
                    return;
                }
            }
            loop {
                let input = match editor.readline("> ") {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        Input::Line(line)
                    }
                    Err(rustyline::error::ReadlineError::Interrupted) => Input::Interrupt,
                    Err(_) => Input::Eof,
                };
                // After Ctrl-C the editor keeps reading: a second Ctrl-C forces the exit.
                let stop = input == Input::Eof;
                if tx.send(input).is_err() {
                    return;
                }
                wake();
                if stop {
                    return;
                }
            }
        })?;
    match prx.recv() {
        Ok(Ok(printer)) => Ok(PrinterOutput {
            printer,
            saved,
            finished: false,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other("the line editor did not start")),
    }
}
