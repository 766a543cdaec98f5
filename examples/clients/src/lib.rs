//! Test harness for the Sockeye examples written in other languages.
//!
//! The tests in `tests/` start a real broker in-process and run, as a user
//! would, the Python client (`examples/python`), the browser chat in
//! headless Chromium (`examples/browser-chat`) and the curl admin script,
//! then check what they print. They need, installed beforehand (CI does):
//!
//! - `pip install -r examples/python/requirements.txt` (websockets, msgpack);
//! - `apt-get install chromium` and `npm ci --prefix examples/browser-chat`
//!   (playwright-core drives `/usr/bin/chromium`);
//! - `curl`.
//!
//! A missing tool fails the test; nothing is skipped.
