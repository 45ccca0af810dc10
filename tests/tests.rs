//! The one integration-test binary: every module below runs against real sockets.
