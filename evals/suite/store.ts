export interface Entry<V> {
  value: V;
  expiresAt: number;
}

export interface StoreOptions {
  ttlMs: number;
  maxEntries: number;
}

const defaults: StoreOptions = {
  ttlMs: 60_000,
  maxEntries: 1000,
};

/** An in-memory cache whose entries expire, evicting the oldest entry when full. */
export class TtlStore<V> {
  private entries = new Map<string, Entry<V>>();
  private options: StoreOptions;

  constructor(options: Partial<StoreOptions> = {}) {
    this.options = { ...defaults, ...options };
  }

  get(key: string): V | undefined {
    const entry = this.entries.get(key);
    if (!entry) {
      return undefined;
    }
    if (entry.expiresAt < Date.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return entry.value;
  }

  set(key: string, value: V): void {
    if (this.entries.size >= this.options.maxEntries) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) {
        this.entries.delete(oldest);
      }
    }
    this.entries.set(key, { value, expiresAt: Date.now() + this.options.ttlMs });
  }

  delete(key: string): boolean {
    return this.entries.delete(key);
  }

  get size(): number {
    return this.entries.size;
  }
}
