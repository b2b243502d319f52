// A llama_batch owned by its scope, and the shared prefix of two token lists: what the session
// (session.cpp) and the batched replay (replay.cpp) both build their decodes from.
#pragma once

#include "llama.h"

#include <cstdint>
#include <vector>

namespace dnd {

struct Batch {
    llama_batch b;
    Batch(int n, int n_seq) : b(llama_batch_init(n, 0, n_seq)) {}
    ~Batch() { llama_batch_free(b); }
    Batch(const Batch &) = delete;
    Batch & operator=(const Batch &) = delete;
    int add(int32_t token, int pos, int seq, bool logits) {
        const int i = b.n_tokens++;
        b.token[i] = token;
        b.pos[i] = pos;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = seq;
        b.logits[i] = logits;
        return i;
    }
};

inline size_t common_prefix(const std::vector<int32_t> & a, const std::vector<int32_t> & b) {
    size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n]) {
        ++n;
    }
    return n;
}

} // namespace dnd
