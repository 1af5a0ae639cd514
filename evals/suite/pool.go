package pool

import (
	"context"
	"errors"
	"sync"
)

// ErrClosed is returned when a job is submitted to a pool that was closed.
var ErrClosed = errors.New("pool: closed")

// Job is one unit of work.
type Job func(ctx context.Context) error

// Pool runs jobs on a fixed number of workers.
type Pool struct {
	jobs   chan Job
	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
	errs   []error
}

// New starts a pool with the given number of workers.
func New(ctx context.Context, workers int) *Pool {
	p := &Pool{jobs: make(chan Job)}
	for i := 0; i < workers; i++ {
		p.wg.Add(1)
		go p.work(ctx)
	}
	return p
}

func (p *Pool) work(ctx context.Context) {
	defer p.wg.Done()
	for job := range p.jobs {
		if err := job(ctx); err != nil {
			p.mu.Lock()
			p.errs = append(p.errs, err)
			p.mu.Unlock()
		}
	}
}

// Submit queues a job; it blocks until a worker takes it.
func (p *Pool) Submit(job Job) error {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return ErrClosed
	}
	p.jobs <- job
	return nil
}

// Close stops accepting jobs, waits for the running ones and returns their errors.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	close(p.jobs)
	p.wg.Wait()
	return errors.Join(p.errs...)
}
