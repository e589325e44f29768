//! The requests we have sent the rendezvous server and not yet seen answered: every
//! request leaves with a fresh random nonce (and padded, see [`wire::REQUEST_SIZE`]), and
//! a message from the server's address counts as an answer only if it carries one of
//! those nonces. Someone off the path who forges the server's address cannot guess one, so
//! a forged `Registered`, `Found` or `Error` changes nothing.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::Rng;

use crate::wire::{self, Message, Nonce};

/// How many unanswered nonces are remembered; the oldest go first. A request is resent
/// with a new nonce, and an answer to an earlier send still counts while its nonce is
/// here: this is many times the requests a client has outstanding at once.
const REMEMBERED: usize = 256;

pub(super) struct Requests {
    rng: StdRng,
    outstanding: VecDeque<Nonce>,
}

impl Requests {
    pub fn new(rng: StdRng) -> Self {
        Requests {
            rng,
            outstanding: VecDeque::new(),
        }
    }

    /// Gives a request to the server its nonce and its padding, just before it leaves.
    pub fn stamp(&mut self, msg: &mut Message) {
        if !msg.is_server_request() {
            return;
        }
        let nonce = self.rng.random_range(1..=Nonce::MAX);
        msg.set_nonce(nonce);
        wire::pad_request(msg);
        if self.outstanding.len() >= REMEMBERED {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back(nonce);
    }

    /// Whether `msg`, from the server's address, answers a request of ours (its nonce is
    /// taken: a repeat of the same answer is not an answer again). Messages that carry no
    /// nonce (peer-to-peer ones) are not for this check and pass.
    pub fn is_answer(&mut self, msg: &Message) -> bool {
        let Some(nonce) = msg.nonce() else {
            return true;
        };
        match self.outstanding.iter().position(|&n| n == nonce) {
            Some(i) if nonce != 0 => {
                self.outstanding.remove(i);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn lookup() -> Message {
        Message::lookup(3)
    }

    fn inactive(nonce: Nonce) -> Message {
        Message::Inactive { id: 3, nonce }
    }

    #[test]
    fn a_request_leaves_with_a_fresh_nonce_and_padded() {
        let mut r = Requests::new(StdRng::seed_from_u64(1));
        let (mut a, mut b) = (lookup(), lookup());
        r.stamp(&mut a);
        r.stamp(&mut b);
        let (na, nb) = (a.nonce().unwrap(), b.nonce().unwrap());
        assert!(na != 0 && nb != 0 && na != nb);
        assert!(wire::encode(&a).len() >= wire::REQUEST_SIZE);
    }

    #[test]
    fn only_an_answer_with_a_nonce_we_sent_counts_and_only_once() {
        let mut r = Requests::new(StdRng::seed_from_u64(2));
        let mut a = lookup();
        r.stamp(&mut a);
        let n = a.nonce().unwrap();
        assert!(!r.is_answer(&inactive(0)), "no nonce");
        assert!(!r.is_answer(&inactive(n ^ 1)), "a guess");
        assert!(r.is_answer(&inactive(n)));
        assert!(!r.is_answer(&inactive(n)), "the same answer twice");
        // Peer-to-peer messages are not answers and pass.
        assert!(r.is_answer(&Message::Ping {
            from: 1,
            session: 2
        }));
    }

    #[test]
    fn an_answer_to_an_earlier_send_still_counts_until_many_more_were_sent() {
        let mut r = Requests::new(StdRng::seed_from_u64(3));
        let mut first = lookup();
        r.stamp(&mut first);
        let n = first.nonce().unwrap();
        for _ in 0..REMEMBERED - 1 {
            r.stamp(&mut lookup());
        }
        assert!(r.is_answer(&inactive(n)));
        let mut again = lookup();
        r.stamp(&mut again);
        let n = again.nonce().unwrap();
        for _ in 0..REMEMBERED {
            r.stamp(&mut lookup());
        }
        assert!(
            !r.is_answer(&inactive(n)),
            "forgotten after REMEMBERED more"
        );
    }
}
