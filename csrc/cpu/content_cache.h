// A small per-thread cache of values computed from a call's inputs, keyed by the bytes of those inputs.
//
// Used where a backward recomputes exactly what its forward computed from the same small inputs (lognormal's unit
// prologue and its per-unit θ table, bernoulli's ξ table): a training step runs every layer's forward, then the
// backwards in reverse, so the cache keeps a few dozen entries (least recently used evicted, and a byte budget).
// Keys are the inputs' contents, not tensor identities, so an in-place update or a reused allocation can never
// return a stale value; the value is whatever the same code computed from equal inputs, so results are
// bit-identical with or without a hit.
#pragma once
#include <cstddef>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

namespace fastbayes::cpu {

class KeyBuilder {
 public:
  KeyBuilder& add(const void* p, size_t n) {
    const size_t at = bytes_.size();
    bytes_.resize(at + n + sizeof(size_t));
    std::memcpy(bytes_.data() + at, &n, sizeof(size_t));  // length-prefixed: no two inputs concatenate alike
    if (n) std::memcpy(bytes_.data() + at + sizeof(size_t), p, n);
    return *this;
  }
  template <typename T>
  KeyBuilder& value(const T& v) {
    return add(&v, sizeof(T));
  }
  std::vector<char> take() { return std::move(bytes_); }

 private:
  std::vector<char> bytes_;
};

template <typename V>
class ContentCache {
 public:
  ContentCache(size_t max_entries, size_t max_bytes) : max_entries_(max_entries), max_bytes_(max_bytes) {}

  std::shared_ptr<const V> find(const std::vector<char>& key) {
    const size_t i = index(key);
    if (i == kNone) return nullptr;
    if (i == 0) return entries_[0].value;
    std::swap(entries_[i], entries_[i - 1]);  // move toward the front: cheap LRU approximation
    return entries_[i - 1].value;
  }

  // find, then drop the entry: for values that one consumer uses once (lognormal's per-element draw tables)
  std::shared_ptr<const V> take(const std::vector<char>& key) {
    const size_t i = index(key);
    if (i == kNone) return nullptr;
    std::shared_ptr<const V> v = std::move(entries_[i].value);
    entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
    return v;
  }

  void put(std::vector<char> key, std::shared_ptr<const V> value, size_t bytes) {
    if (bytes + key.size() > max_bytes_) return;  // too large to keep
    entries_.insert(entries_.begin(), Entry{std::move(key), std::move(value), bytes});
    size_t total = 0, keep = 0;
    for (; keep < entries_.size() && keep < max_entries_; ++keep) {
      total += entries_[keep].bytes + entries_[keep].key.size();
      if (total > max_bytes_) break;
    }
    entries_.resize(keep);
  }

 private:
  static constexpr size_t kNone = ~size_t{0};

  size_t index(const std::vector<char>& key) const {
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (entries_[i].key == key) return i;
    }
    return kNone;
  }

  struct Entry {
    std::vector<char> key;
    std::shared_ptr<const V> value;
    size_t bytes;
  };
  std::vector<Entry> entries_;
  size_t max_entries_, max_bytes_;
};

}  // namespace fastbayes::cpu
