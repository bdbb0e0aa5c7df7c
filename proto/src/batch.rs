//! Taking batches off a queue: what a sender of batched calls (in-site replication,
//! sync backups to a peer site) does each time it may send.
//!
//! The sender waits for a first item, lets whatever else must happen first happen (a
//! free call slot, other tasks' turn to queue), then takes everything queued, up to a
//! count and a byte budget. An item that would overflow the budget is held for the next
//! batch, so a single item larger than the budget still goes, alone.

use tokio::sync::mpsc;

/// What counts against a batch's byte budget.
pub trait Weighed {
    /// The item's size in bytes (its encoded size).
    fn weight(&self) -> usize;
}

/// A queue drained in batches.
#[derive(Debug)]
pub struct BatchQueue<T> {
    queue: mpsc::UnboundedReceiver<T>,
    /// Taken off the queue but over the last batch's budget: first of the next.
    held: Option<T>,
    max_items: usize,
    max_bytes: usize,
}

impl<T: Weighed> BatchQueue<T> {
    /// Batches of at most `max_items` items and (but for a lone item) `max_bytes` bytes.
    pub fn new(queue: mpsc::UnboundedReceiver<T>, max_items: usize, max_bytes: usize) -> Self {
        BatchQueue {
            queue,
            held: None,
            max_items: max_items.max(1),
            max_bytes,
        }
    }

    /// The first item of the next batch, waiting for one; `None` once the queue is
    /// closed and empty.
    pub async fn first(&mut self) -> Option<T> {
        match self.held.take() {
            Some(item) => Some(item),
            None => self.queue.recv().await,
        }
    }

    /// `first` and what is queued now, within the limits.
    pub fn fill(&mut self, first: T) -> Vec<T> {
        let mut bytes = first.weight();
        let mut batch = vec![first];
        while batch.len() < self.max_items {
            let Ok(item) = self.queue.try_recv() else {
                break;
            };
            if bytes + item.weight() > self.max_bytes {
                self.held = Some(item);
                break;
            }
            bytes += item.weight();
            batch.push(item);
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Weighed for usize {
        fn weight(&self) -> usize {
            *self
        }
    }

    #[tokio::test]
    async fn batches_take_what_is_queued_within_count_and_bytes() {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut queue = BatchQueue::new(receiver, 3, 10);
        for weight in [4, 4, 1, 1, 20, 2] {
            sender.send(weight).unwrap();
        }
        let first = queue.first().await.unwrap();
        assert_eq!(queue.fill(first), [4, 4, 1], "three at most");
        let first = queue.first().await.unwrap();
        assert_eq!(queue.fill(first), [1], "20 would overflow 10 bytes: held");
        let first = queue.first().await.unwrap();
        assert_eq!(queue.fill(first), [20], "alone, though over the budget");
        let first = queue.first().await.unwrap();
        assert_eq!(queue.fill(first), [2]);
        drop(sender);
        assert!(queue.first().await.is_none());
    }
}
