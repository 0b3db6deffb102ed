import { Island, type PageProps } from 'bext/ssr';
import { listPosts } from '../data/posts.js';
import { PostList } from '../components/post-list.js';

/** Regenerated in the background at most once a minute (ISR through the cache plugin). */
export const revalidate = 60;

export async function load() {
  return { posts: (await listPosts()).slice(0, 3), renderedAt: new Date().toISOString() };
}

export default function Home({ data }: PageProps<typeof load>) {
  return (
    <>
      <title>bext example site</title>
      <h1>bext</h1>
      <p>A web server in which every feature is a plugin. This page is React, rendered on the server by the <code>ssr</code> plugin at {data.renderedAt}.</p>
      <section>
        <h2>Live</h2>
        <Island name="clock" props={{ tz: 'UTC' }} fallback={<p className="island-fallback">Loading the server time…</p>} />
      </section>
      <section>
        <h2>Latest posts</h2>
        <PostList posts={data.posts} />
        <p><a href="/blog">All posts →</a></p>
      </section>
    </>
  );
}
