//! The headers of records anyone may have written, read as bytes.
//!
//! rdkafka's `Headers::try_get` (and so `Headers::iter`) panics on a header name that is not
//! UTF-8: it unwraps `CStr::to_str`. A producer can send such a name, so manymodel never calls
//! those on a record it read (an input event, an actual, a control record): it reads names and
//! values here, straight from librdkafka, and a name that is not UTF-8 is simply one that no
//! header manymodel looks for has.

use std::ffi::{c_char, c_void, CStr, CString};

use rdkafka::bindings::{
    rd_kafka_header_cnt, rd_kafka_header_get_all, rd_kafka_header_remove, rd_kafka_headers_t,
};
use rdkafka::message::{BorrowedHeaders, Header, OwnedHeaders};

/// One header as the record carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader<'a> {
    /// The name, as bytes (UTF-8 when the producer kept to the protocol).
    pub name: &'a [u8],
    /// The value; `None` for a null value.
    pub value: Option<&'a [u8]>,
}

/// librdkafka's headers object behind `headers`.
///
/// rdkafka 0.39 (pinned in Cargo.lock) hands out `&BorrowedHeaders` as the address of the
/// native object itself (its own private `as_native_ptr` is this cast).
fn native(headers: &BorrowedHeaders) -> *const rd_kafka_headers_t {
    headers as *const BorrowedHeaders as *const rd_kafka_headers_t
}

/// Every header of `headers`, in order.
pub fn each(headers: &BorrowedHeaders) -> impl Iterator<Item = RawHeader<'_>> {
    let ptr = native(headers);
    // SAFETY: `ptr` is a live headers object for as long as `headers` is borrowed.
    let count = unsafe { rd_kafka_header_cnt(ptr) };
    (0..count).filter_map(move |idx| {
        let mut name: *const c_char = std::ptr::null();
        let mut value: *const c_void = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: as above; librdkafka writes the three out-parameters, pointing into the
        // headers object, which outlives the borrow of `headers` the result is tied to.
        let err = unsafe { rd_kafka_header_get_all(ptr, idx, &mut name, &mut value, &mut size) };
        if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            || name.is_null()
        {
            return None;
        }
        // SAFETY: librdkafka keeps every name NUL-terminated and `size` bytes at `value`.
        let name = unsafe { CStr::from_ptr(name) }.to_bytes();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) });
        Some(RawHeader { name, value })
    })
}

/// The value of the first header named `name`, if there is one with a value.
pub fn value_of<'a>(headers: Option<&'a BorrowedHeaders>, name: &str) -> Option<&'a [u8]> {
    headers
        .into_iter()
        .flat_map(each)
        .find(|h| h.name == name.as_bytes())
        .and_then(|h| h.value)
}

/// A copy of `input` (the exact bytes of every name and value, in order) with `added` in place
/// of any header of the same name: those of `input` are left out, `added` comes last.
pub fn replacing(input: Option<&BorrowedHeaders>, added: &[(&str, &str)]) -> OwnedHeaders {
    let mut headers = match input {
        Some(input) => {
            let copy = input.detach();
            let ptr = native(copy.as_borrowed()).cast_mut();
            for (name, _) in added {
                let Ok(name) = CString::new(*name) else {
                    continue;
                };
                // SAFETY: `copy` is this function's own, which nothing else refers to;
                // removing a name that is absent only answers an error, ignored here.
                unsafe { rd_kafka_header_remove(ptr, name.as_ptr()) };
            }
            copy
        }
        None => OwnedHeaders::new_with_capacity(added.len()),
    };
    for (key, value) in added {
        headers = headers.insert(Header {
            key,
            value: Some(*value),
        });
    }
    headers
}

/// The bytes `headers` hold: every name and value.
pub fn byte_size(headers: &BorrowedHeaders) -> usize {
    each(headers)
        .map(|h| h.name.len() + h.value.map_or(0, <[u8]>::len))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Headers as a hostile producer may send them: a name that is not UTF-8 among others.
    fn hostile() -> OwnedHeaders {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "a",
                value: Some("1"),
            })
            .insert(Header {
                key: "error-kind",
                value: Some("forged"),
            });
        let name = b"\xffb";
        // SAFETY: `headers` is this test's own object; the name and value are valid for the
        // call, which copies them.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_header_add(
                native(headers.as_borrowed()).cast_mut(),
                name.as_ptr().cast(),
                name.len() as isize,
                std::ptr::null(),
                0,
            )
        };
        assert_eq!(
            err,
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        );
        headers
    }

    #[test]
    fn names_that_are_not_utf8_are_read_as_bytes() {
        let owned = hostile();
        let headers = owned.as_borrowed();
        let all: Vec<RawHeader<'_>> = each(headers).collect();
        assert_eq!(
            all,
            [
                RawHeader {
                    name: b"a",
                    value: Some(b"1")
                },
                RawHeader {
                    name: b"error-kind",
                    value: Some(b"forged")
                },
                RawHeader {
                    name: b"\xffb",
                    value: None
                },
            ]
        );
        assert_eq!(value_of(Some(headers), "a"), Some(&b"1"[..]));
        assert_eq!(value_of(Some(headers), "b"), None);
        assert_eq!(value_of(None, "a"), None);
        assert_eq!(byte_size(headers), 1 + 1 + 10 + 6 + 2);
    }

    #[test]
    fn a_copy_keeps_every_header_but_the_replaced_names_and_adds_its_own_last() {
        let owned = hostile();
        let copy = replacing(Some(owned.as_borrowed()), &[("error-kind", "invalid_json")]);
        let names: Vec<&[u8]> = each(copy.as_borrowed()).map(|h| h.name).collect();
        assert_eq!(names, [&b"a"[..], b"\xffb", b"error-kind"]);
        assert_eq!(
            value_of(Some(copy.as_borrowed()), "error-kind"),
            Some(&b"invalid_json"[..])
        );
        // The input is untouched.
        assert_eq!(each(owned.as_borrowed()).count(), 3);
        let fresh = replacing(None, &[("x", "y")]);
        assert_eq!(each(fresh.as_borrowed()).count(), 1);
    }
}
