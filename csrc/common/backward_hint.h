// Whether the forward now running will be differentiated: set by the C++ autograd nodes (csrc/autograd.cpp) around
// their forward, read by CPU kernels that can leave work behind for their backward (lognormal's per-element draw
// tables, csrc/cpu/lognormal.cpp).  Thread-local: a CPU op runs on the thread that called it, and a CPU backward on
// the thread that called backward().  Only a hint: a kernel gives the same bits with it or without it.
#pragma once

namespace fastbayes {

// the thread's flag: an inline function's thread_local, one object across the extension's translation units
inline bool& forward_will_backward() {
  thread_local bool on = false;
  return on;
}

class ForwardWillBackward {
 public:
  explicit ForwardWillBackward(bool on) : prev_(forward_will_backward()) { forward_will_backward() = on; }
  ~ForwardWillBackward() { forward_will_backward() = prev_; }
  ForwardWillBackward(const ForwardWillBackward&) = delete;
  ForwardWillBackward& operator=(const ForwardWillBackward&) = delete;

 private:
  bool prev_;
};

}  // namespace fastbayes
