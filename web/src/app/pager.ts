// The rules of reading a list page by page, apart from Preact: when a page may be asked for,
// with which cursor, and which answers still count. usePaged (paged.ts) drives it.

export interface Turn {
  cursor: string | null;
  generation: number;
}

export class Pager {
  private cursor: string | null = null;
  private finished = false;
  private busy = false;
  private failed = false;
  private generation = 0;

  // Back to the first page; answers to earlier asks no longer count.
  reset(): void {
    this.generation += 1;
    this.cursor = null;
    this.finished = false;
    this.busy = false;
    this.failed = false;
  }

  // The next page to ask for, or null: one ask at a time, none after the last page (a null
  // cursor then would read the first page again), and none by scrolling (``auto``) after a
  // failure — only the user's "Try again", so a shed read is not sent behind Retry-After's back.
  begin(auto: boolean): Turn | null {
    if (this.busy || this.finished || (auto && this.failed)) return null;
    this.busy = true;
    return { cursor: this.cursor, generation: this.generation };
  }

  // The page asked for in ``turn`` arrived; false if the list was reset since (drop it).
  arrived(turn: Turn, nextCursor: string | null): boolean {
    if (turn.generation !== this.generation) return false;
    this.cursor = nextCursor;
    this.finished = nextCursor === null;
    this.busy = false;
    this.failed = false;
    return true;
  }

  // The ask in ``turn`` failed; false if the list was reset since (ignore it).
  failedAt(turn: Turn): boolean {
    if (turn.generation !== this.generation) return false;
    this.busy = false;
    this.failed = true;
    return true;
  }
}
