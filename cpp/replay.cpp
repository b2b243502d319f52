// Session::replay: many generations at once over shared, incrementally decoded prefixes.
//
// Each decode call holds one token of every running fork plus the next prompt tokens of the job
// being fed. A job's prompt is fed into its stream's main sequence from the first token that
// differs from what that sequence holds; once its last token is decoded, the main sequence is
// copied into a free fork sequence (llama_memory_seq_cp: the cells are shared, not copied), the
// turn is generated there, and the fork is dropped (llama_memory_seq_rm) when it stops. The main
// sequence meanwhile goes on with the next job's prompt (the reference turn, the next message).
#include "native.h"

#include "llama.h"

#include <algorithm>
#include <chrono>
#include <map>

namespace dnd {

namespace {

using Clock = std::chrono::steady_clock;

} // namespace

struct Session::Replay {
    struct Stream {
        int main = -1;                  // its main sequence; -1 once its last job is forked
        std::vector<int32_t> cached;    // what the main sequence holds
        size_t pinned = 0;              // prefix cells its live forks still share
        int live_forks = 0;
        size_t last_job = 0;
    };
    struct Fork {
        size_t job;
        int seq, stream;
        int32_t next = -1;              // sampled, to be decoded next
        int batch_index = -1;
        SamplerHandle sampler;
        GenerateResult res;
    };
    struct Pending {                    // a job whose last prompt token is in this batch
        size_t job;
        int batch_index;
    };

    Session & s;
    const std::vector<ReplayJob> & jobs;
    const GenerateOptions & opts;
    const ReplayProgress & progress;
    ReplayStats & stats;
    const llama_vocab * vocab;
    llama_memory_t mem;
    std::vector<GenerateResult> results;
    std::map<int, Stream> streams;
    std::vector<Fork> forks;
    std::vector<int> free_seqs;
    size_t next = 0, done = 0;
    long feed_pos = -1;                 // next prompt token of jobs[next] to feed; -1 = not started

    Replay(Session & s, const std::vector<ReplayJob> & jobs, const GenerateOptions & opts,
           const ReplayProgress & progress, ReplayStats & stats)
        : s(s), jobs(jobs), opts(opts), progress(progress), stats(stats),
          vocab(llama_model_get_vocab(s.model_.get())), mem(llama_get_memory(s.ctx_.get())), results(jobs.size()) {
        for (int seq = (int) llama_n_seq_max(s.ctx_.get()) - 1; seq >= 0; --seq) {
            free_seqs.push_back(seq);
        }
        for (const auto & job : jobs) {
            stats.prompt_tokens += (int64_t) job.prompt.size();
        }
    }

    size_t last_job_of(int stream) const {
        size_t last = 0;
        for (size_t j = next; j < jobs.size(); ++j) {
            last = jobs[j].stream == stream ? j : last;
        }
        return last;
    }

    // KV cells held now (shared prefixes once) plus the room forks, running or about to start, may take
    size_t cells_reserved(size_t n_pending) const {
        size_t n = 0;
        for (const auto & [id, st] : streams) {
            n += std::max(st.cached.size(), st.pinned);
        }
        return n + (forks.size() + n_pending) * (size_t) opts.max_tokens;
    }

    void run() {
        const int n_batch = s.opts_.n_batch;
        Batch batch(n_batch, 1);
        while (done < jobs.size()) {
            batch.clear();
            for (auto & f : forks) {
                f.batch_index = batch.add(f.next, (int) (jobs[f.job].prompt.size() + f.res.n_generated - 1), f.seq, true);
            }
            std::vector<Pending> pending = feed(batch);
            if (batch.b.n_tokens == 0) {
                throw Error("replay: job " + std::to_string(next) + " does not fit the KV cache of " +
                            std::to_string(llama_n_ctx(s.ctx_.get())) + " cells\nfix: raise the session's n_ctx");
            }
            const auto t0 = Clock::now();
            s.decode(batch.b, "replay");
            const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
            (pending.empty() && batch.b.n_tokens == (int) forks.size() ? stats.gen_seconds : stats.prompt_seconds) += dt;
            stats.decodes += 1;
            stats.max_parallel = std::max<int64_t>(stats.max_parallel, (int64_t) forks.size());
            step_forks();
            for (const auto & p : pending) {
                start_fork(p);
            }
        }
    }

    // adds the next prompt tokens to `batch`; returns the jobs whose prompts are complete in it
    std::vector<Pending> feed(Batch & batch) {
        std::vector<Pending> pending;
        const int n_batch = s.opts_.n_batch;
        while (next < jobs.size() && batch.b.n_tokens < n_batch &&
               forks.size() + pending.size() < (size_t) s.opts_.n_parallel) {
            const auto & prompt = jobs[next].prompt;
            const int id = jobs[next].stream;
            if (feed_pos < 0 && !start_job(id, pending)) {
                break;
            }
            Stream & st = streams[id];
            while (feed_pos < (long) prompt.size() && batch.b.n_tokens < n_batch) {
                const bool last = feed_pos + 1 == (long) prompt.size();
                const int index = batch.add(prompt[feed_pos], (int) feed_pos, st.main, last);
                st.cached.push_back(prompt[feed_pos++]);
                stats.fed_tokens += 1;
                if (last) {
                    pending.push_back({next++, index});
                    feed_pos = -1;
                    break;
                }
            }
            if (feed_pos >= 0) {
                break;   // the batch is full mid-prompt
            }
        }
        return pending;
    }

    // sets feed_pos for jobs[next]; false when it must wait (no sequence or cells free yet)
    bool start_job(int id, const std::vector<Pending> & pending) {
        auto it = streams.find(id);
        if (it == streams.end()) {
            // one conversation at a time: its turns fill the batch; a replay where the next
            // conversation's prefix was decoded while the last one's forks still ran parted from
            // the one-at-a-time tokens far from any tie (a cell-reuse interaction not yet pinned down)
            if (free_seqs.empty() || !streams.empty()) {
                return false;
            }
            it = streams.emplace(id, Stream{}).first;
            it->second.main = free_seqs.back();
            free_seqs.pop_back();
            it->second.last_job = last_job_of(id);
        }
        Stream & st = it->second;
        const auto & prompt = jobs[next].prompt;
        const size_t keep = std::min(common_prefix(st.cached, prompt), prompt.size() - 1);
        if (keep < st.cached.size()) {
            for (const auto & p : pending) {
                if (jobs[p.job].stream == id) {
                    return false;   // that job's fork must copy these cells first
                }
            }
        }
        const size_t extra = prompt.size() - keep + (size_t) opts.max_tokens;
        if (cells_reserved(pending.size()) + extra > llama_n_ctx(s.ctx_.get()) && !(forks.empty() && pending.empty())) {
            return false;   // wait for running forks to free their cells
        }
        if (keep < st.cached.size()) {
            llama_memory_seq_rm(mem, st.main, (llama_pos) keep, -1);
            st.cached.resize(keep);
        }
        feed_pos = (long) keep;
        return true;
    }

    void start_fork(const Pending & p) {
        Stream & st = streams[jobs[p.job].stream];
        Fork f{p.job, free_seqs.back(), jobs[p.job].stream, -1, p.batch_index,
               new_sampler(vocab, opts), {}};
        free_seqs.pop_back();
        const size_t n_prompt = jobs[p.job].prompt.size();
        llama_memory_seq_cp(mem, st.main, f.seq, 0, (llama_pos) n_prompt);
        f.res.n_prompt = (int) n_prompt;
        st.pinned = std::max(st.pinned, n_prompt);
        st.live_forks += 1;
        if (p.job == st.last_job) {   // nothing more to feed: the forks keep the cells they share
            llama_memory_seq_rm(mem, st.main, -1, -1);
            free_seqs.push_back(st.main);
            st.main = -1;
            st.cached.clear();
        }
        forks.push_back(std::move(f));
        if (!advance(forks.back())) {
            finish(forks.back());
            forks.pop_back();
        }
    }

    void step_forks() {
        std::vector<Fork> running;
        for (auto & f : forks) {
            if (advance(f)) {
                running.push_back(std::move(f));
            } else {
                finish(f);
            }
        }
        forks = std::move(running);
    }

    // greedy without a grammar: the first highest logit, as llama.cpp's greedy sampler picks, without
    // building its candidate array (the vocabulary of Gemma is 262k tokens, per fork and step)
    int32_t argmax(int batch_index) const {
        const float * logits = llama_get_logits_ith(s.ctx_.get(), batch_index);
        if (!logits) {
            throw Error("replay: no logits at batch position " + std::to_string(batch_index));
        }
        const int n_vocab = llama_vocab_n_tokens(vocab);
        return (int32_t) (std::max_element(logits, logits + n_vocab) - logits);
    }

    // samples the fork's next token; false once the fork stops (stop_reason set)
    bool advance(Fork & f) {
        const int32_t tok = opts.grammar.empty() && opts.temperature <= 0 ? argmax(f.batch_index) : sample_token(f.sampler.get(), s.ctx_.get(), f.batch_index);
        if (!take_token(f.res, vocab, tok, opts)) {
            return false;
        }
        if (f.res.n_generated >= opts.max_tokens) {
            f.res.stop_reason = "length";
            return false;
        }
        f.next = tok;
        return true;
    }

    void finish(Fork & f) {
        llama_memory_seq_rm(mem, f.seq, -1, -1);
        free_seqs.push_back(f.seq);
        Stream & st = streams[f.stream];
        st.live_forks -= 1;
        if (st.live_forks == 0 && st.main < 0) {
            streams.erase(f.stream);
        }
        stats.generated += f.res.n_generated;
        results[f.job] = std::move(f.res);
        done += 1;
        if (progress && !progress((int) done, (int) jobs.size())) {
            throw Error("replay cancelled");
        }
    }
};

std::vector<GenerateResult> Session::replay(const std::vector<ReplayJob> & jobs, const GenerateOptions & opts,
                                            const ReplayProgress & progress, ReplayStats * stats) {
    const int n_ctx = std::min<int>(opts.n_ctx, llama_n_ctx(ctx_.get()));
    for (size_t j = 0; j < jobs.size(); ++j) {
        if (jobs[j].prompt.empty() || (int) jobs[j].prompt.size() + opts.max_tokens > n_ctx) {
            throw Error("replay job " + std::to_string(j) + ": prompt (" + std::to_string(jobs[j].prompt.size()) +
                        " tokens) plus max_tokens (" + std::to_string(opts.max_tokens) + ") is empty or exceeds the "
                        "context of " + std::to_string(n_ctx) +
                        "\nfix: skip that turn, raise n_ctx or lower max_tokens");
        }
    }
    set_threads(opts.n_threads);
    clear();
    ReplayStats local;
    ReplayStats & st = stats ? *stats : local;
    st = ReplayStats{};
    const auto t0 = Clock::now();
    Replay r(*this, jobs, opts, progress, st);
    try {
        r.run();
    } catch (...) {
        clear();
        throw;
    }
    clear();
    st.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    for (auto & res : r.results) {
        res.prompt_tokens_per_s = st.fed_tokens / std::max(1e-9, st.prompt_seconds);
        res.gen_tokens_per_s = st.generated / std::max(1e-9, st.seconds);
    }
    return std::move(r.results);
}

} // namespace dnd
