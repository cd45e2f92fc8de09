//! Line numbers of CSV records as an editor shows them.

use std::collections::VecDeque;

/// A CSV file read through a count of its lines, so that a row's line is the one an editor
/// shows. The csv crate's own count stops short of the line end and the blank lines the reader
/// skips before a record: one too low for every row after a CRLF line end, and after each blank
/// line (BurntSushi/rust-csv#395).
pub(super) struct Lines<R> {
    inner: R,
    /// Bytes read and not yet passed over by [`Lines::line_at`]; the first is byte `start` of
    /// the file. The reader asks for every record as soon as it has read it, so this holds
    /// little more than the csv reader's buffer.
    window: VecDeque<u8>,
    start: u64,
    /// Line feeds before `start`.
    line_feeds: u64,
}

impl<R> Lines<R> {
    pub(super) fn new(inner: R) -> Self {
        Lines {
            inner,
            window: VecDeque::new(),
            start: 0,
            line_feeds: 0,
        }
    }

    /// The line (from 1) of a record the reader began at `byte`: of its first byte that ends
    /// no line, past what is left of the line before and any blank lines.
    pub(super) fn line_at(&mut self, byte: u64) -> u64 {
        let passed = (byte.saturating_sub(self.start) as usize).min(self.window.len());
        let count = |bytes: &[u8]| bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        let (front, back) = self.window.as_slices();
        let in_front = passed.min(front.len());
        self.line_feeds += count(&front[..in_front]) + count(&back[..passed - in_front]);
        self.window.drain(..passed);
        self.start += passed as u64;
        let blank = self
            .window
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .filter(|&&b| b == b'\n')
            .count() as u64;
        1 + self.line_feeds + blank
    }
}

impl<R: std::io::Read> std::io::Read for Lines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.window.extend(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::Lines;
    use std::io::Read;

    #[test]
    fn a_record_is_on_the_line_of_its_first_byte_past_line_ends_and_blank_lines() {
        let text = b"a,b\r\n1,2\r\n\r\n\n3,4\n\"x\ny\",5\n6,7";
        let mut lines = Lines::new(&text[..]);
        let mut all = Vec::new();
        lines.read_to_end(&mut all).unwrap();
        // Each record's byte offset as the csv reader reports it: where the line before ended.
        let starts = [0, 3, 8, 16, 24];
        let got: Vec<u64> = starts.iter().map(|&b| lines.line_at(b)).collect();
        assert_eq!(got, [1, 2, 5, 6, 8]);
    }
}
