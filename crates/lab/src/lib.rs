//! The chaos laboratory (issue 6): a [`cluster`] of region nodes and a coordinator whose nodes
//! can be killed, paused, restarted and skewed, and the experiment runner built on it.
