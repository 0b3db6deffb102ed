import type { PageContext, PageProps } from 'bext/ssr';
import { listPosts } from '../../data/posts.js';
import { PostList } from '../../components/post-list.js';

/** Fresh for 30 s, then served stale for up to 5 minutes while a new render replaces it. */
export const mode = 'swr';
export const revalidate = 30;
export const swr = 300;

export async function load({ query }: PageContext) {
  const q = query.q ?? '';
  return { q, posts: await listPosts(q) };
}

export default function Blog({ data }: PageProps<typeof load>) {
  return (
    <>
      <title>Blog · bext example</title>
      <h1>Blog</h1>
      {/* A GET form: Turbo follows it like a link and swaps in the results page. */}
      <form action="/blog" method="get" id="search">
        <input type="search" name="q" defaultValue={data.q} placeholder="Search posts" aria-label="Search posts" />
        <button type="submit">Search</button>
      </form>
      {data.q ? <p id="results">{data.posts.length} result{data.posts.length === 1 ? '' : 's'} for “{data.q}”</p> : null}
      <PostList posts={data.posts} />
    </>
  );
}
